//! A SIGKILLed `certgate up` leaves nothing behind: its signer, core and edge notice they were
//! re-parented (CERTGATE_PARENT_PID watch, certgate_proto::parent) and shut down by themselves,
//! freeing their ports. Real processes, real SIGKILL, real ports. Under `--fleet`, PostgreSQL and
//! Redis cannot watch their parent (docs/operations.md); the test stops them by pid.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use certgate_e2e::{
    ChildGuard, Fleet, bin, free_port, pid_alive, start_up, temp_dir, wait_for_log, wait_pid_gone,
};

#[test]
fn up_children_exit_when_up_is_sigkilled() {
    let fleet = Fleet::uninitialised();
    let mut up = start_up(&fleet);
    let up_pid = up.pid();

    // The children, from the pid file `up` writes (name=pid lines).
    let pid_file = fleet.data_dir().join("run/pids");
    let text = std::fs::read_to_string(&pid_file).expect("up writes run/pids");
    let pids: Vec<(String, u32)> = text
        .lines()
        .filter_map(|l| {
            let (name, pid) = l.split_once('=')?;
            Some((name.trim().to_owned(), pid.trim().parse().ok()?))
        })
        .collect();
    assert_eq!(pids.len(), 3, "pid file:\n{text}");
    for (name, pid) in &pids {
        assert!(*pid > 0 && pid_alive(*pid), "{name} ({pid}) not running");
        assert_ne!(*pid, up_pid);
    }

    // SIGKILL: `up` gets no chance to stop anything itself.
    up.kill();
    assert!(!pid_alive(up_pid), "certgate up survived SIGKILL");

    for (name, pid) in &pids {
        assert!(
            wait_pid_gone(*pid, Duration::from_secs(30)),
            "{name} ({pid}) still running 30 s after `up` was SIGKILLed"
        );
    }
    // They left through the parent watch (not some other failure), and logged why.
    for name in ["signer", "core", "edge"] {
        let log = std::fs::read_to_string(fleet.data_dir().join(format!("logs/{name}.log")))
            .unwrap_or_default();
        assert!(
            log.contains("supervising parent process exited"),
            "{name} log does not say why it stopped:\n{log}"
        );
    }
    // The ports are free again.
    for addr in [fleet.https, fleet.http, fleet.admin] {
        assert!(
            TcpListener::bind(addr).is_ok(),
            "{addr} still held after the children exited"
        );
    }
}

/// Stops the servers `up --fleet` cannot make exit with it (PostgreSQL, Redis) by pid, whatever
/// the test's outcome: fast shutdown first, SIGKILL if they linger.
struct StopServers(Vec<(String, u32)>);

impl Drop for StopServers {
    fn drop(&mut self) {
        for (name, pid) in &self.0 {
            // postmaster: SIGINT is "fast shutdown"; redis-server: SIGTERM.
            let sig = if name == "postgres" { "-INT" } else { "-TERM" };
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
            if !wait_pid_gone(*pid, Duration::from_secs(20)) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

#[test]
fn up_fleet_children_exit_when_up_is_sigkilled() {
    if !certgate_devservers::pg::PgServer::available() {
        panic!("PostgreSQL is not installed: apt-get install -y postgresql (CI installs it)");
    }
    for b in [
        "certgate",
        "certgate-signer",
        "certgate-core",
        "certgate-edge",
    ] {
        bin(b);
    }
    let dir = temp_dir();
    let data = dir.path().join("data");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let ports: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut cmd = Command::new(bin("certgate"));
    cmd.args(["up", "--fleet", "1", "--data-dir"])
        .arg(&data)
        .args(["--https", &ports[0].to_string()])
        .args(["--http", &ports[1].to_string()])
        .args(["--admin", &ports[2].to_string()]);
    let mut up = ChildGuard::spawn("certgate up --fleet", cmd, &scratch.join("up.log"));
    wait_for_log(&up, "Press Ctrl-C to stop.", Duration::from_secs(240));

    let text =
        std::fs::read_to_string(data.join("fleet/run/pids")).expect("up --fleet writes run/pids");
    let pids: Vec<(String, u32)> = text
        .lines()
        .filter_map(|l| {
            let (name, pid) = l.split_once('=')?;
            Some((name.trim().to_owned(), pid.trim().parse().ok()?))
        })
        .collect();
    let (ours, servers): (Vec<_>, Vec<_>) = pids
        .into_iter()
        .partition(|(name, _)| name.starts_with("certgate-"));
    let _servers = StopServers(servers.clone());
    // signer, 2 cores, 1 edge; postgres and redis-server.
    assert_eq!(ours.len(), 4, "pid file:\n{text}");
    assert_eq!(servers.len(), 2, "pid file:\n{text}");
    for (name, pid) in ours.iter().chain(servers.iter()) {
        assert!(*pid > 0 && pid_alive(*pid), "{name} ({pid}) not running");
    }

    up.kill();
    for (name, pid) in &ours {
        assert!(
            wait_pid_gone(*pid, Duration::from_secs(30)),
            "{name} ({pid}) still running 30 s after `up --fleet` was SIGKILLed"
        );
    }
    for addr in &ports {
        assert!(
            TcpListener::bind(addr).is_ok(),
            "{addr} still held after the children exited"
        );
    }
}
