//! A SIGKILLed `certgate up` leaves nothing behind: its signer, core and edge notice they were
//! re-parented (CERTGATE_PARENT_PID watch, certgate_proto::parent) and shut down by themselves,
//! freeing their ports. Real processes, real SIGKILL, real ports.

use std::net::TcpListener;
use std::time::Duration;

use certgate_e2e::{Fleet, pid_alive, start_up, wait_pid_gone};

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
