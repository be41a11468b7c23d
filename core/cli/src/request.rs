//! `certgate request list|approve|deny`: certificate requests held for manual approval
//! (profiles with `approval = "manual"`, docs/profiles.md), decided through the core's
//! `RequestAdmin` service on the admin allow-list — an edge can never approve.

use certgate_proto::admin::request_admin_client::RequestAdminClient;
use certgate_proto::admin::{DecideRequest, ListRequestsRequest, PendingRequest};

use crate::client::Clients;
use crate::error::Result;

fn client(clients: &Clients) -> RequestAdminClient<tonic::transport::Channel> {
    clients.request_admin.clone()
}

/// Unix seconds as shown (`@` + seconds, as `date -d @N` reads them).
fn time(unix: i64) -> String {
    format!("@{unix}")
}

fn show(r: &PendingRequest) {
    println!("id         {}", r.id);
    println!("state      {}", r.state);
    println!("protocol   {}", r.protocol);
    println!("client     {}", r.client_identity);
    println!("profile    {}", r.profile);
    println!("request    {}", r.summary);
    println!("created    {}", time(r.created_unix));
    println!("expires    {}", time(r.expires_unix));
    if !r.decided_by.is_empty() {
        println!("decided by {} at {}", r.decided_by, time(r.decided_unix));
    }
    if !r.reason.is_empty() {
        println!("reason     {}", r.reason);
    }
    if !r.serial_hex.is_empty() {
        println!("serial     {}", r.serial_hex);
    }
    if !r.issue_error.is_empty() {
        println!(
            "not issued yet ({}); the client's next poll retries",
            r.issue_error
        );
    }
}

/// `request list`: one line per request, oldest first.
pub async fn list(clients: &Clients, tenant: &str, state: &str) -> Result<()> {
    let resp = client(clients)
        .list_requests(ListRequestsRequest {
            tenant: tenant.into(),
            state: state.into(),
            limit: 1000,
        })
        .await?
        .into_inner();
    println!("ID\tSTATE\tPROTOCOL\tPROFILE\tCREATED\tCLIENT\tREQUEST\tSERIAL");
    for r in resp.requests {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.id,
            r.state,
            r.protocol,
            r.profile,
            time(r.created_unix),
            r.client_identity,
            r.summary,
            r.serial_hex
        );
    }
    Ok(())
}

/// `request approve`: approves and issues (once).
pub async fn approve(clients: &Clients, tenant: &str, id: &str, reason: &str) -> Result<()> {
    let r = client(clients)
        .approve_request(DecideRequest {
            tenant: tenant.into(),
            id: id.into(),
            reason: reason.into(),
        })
        .await?
        .into_inner();
    show(&r);
    Ok(())
}

/// `request deny`: every later poll of the request is refused.
pub async fn deny(clients: &Clients, tenant: &str, id: &str, reason: &str) -> Result<()> {
    let r = client(clients)
        .deny_request(DecideRequest {
            tenant: tenant.into(),
            id: id.into(),
            reason: reason.into(),
        })
        .await?
        .into_inner();
    show(&r);
    Ok(())
}
