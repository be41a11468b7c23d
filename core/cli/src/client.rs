//! Clients for the core's `Admin` and `Core` services over its Unix socket (the socket named in
//! the data dir's core config). The core authenticates us by our uid (SO_PEERCRED).

use std::path::Path;
use std::time::Duration;

use certgate_proto::admin::admin_client::AdminClient;
use certgate_proto::core::core_client::CoreClient;
use certgate_proto::transport::unix_channel;
use certgate_proto::{ErrorKind, RpcError};
use tonic::transport::Channel;

use crate::datadir::DataDir;

/// Both clients on one channel.
#[derive(Clone)]
pub struct Clients {
    /// `certgate.admin.v1.Admin`.
    pub admin: AdminClient<Channel>,
    /// `certgate.core.v1.Core`.
    pub core: CoreClient<Channel>,
    /// `certgate.cmp.v1.CmpAdmin`.
    pub cmp_admin: certgate_proto::cmp::cmp_admin_client::CmpAdminClient<Channel>,
    /// `certgate.scep.v1.ScepAdmin`.
    pub scep_admin: certgate_proto::scep::scep_admin_client::ScepAdminClient<Channel>,
    /// `certgate.admin.v1.RequestAdmin` (requests held for manual approval).
    pub request_admin: certgate_proto::admin::request_admin_client::RequestAdminClient<Channel>,
}

impl Clients {
    /// Clients for the core serving on `socket`.
    pub fn at(socket: &Path) -> Self {
        let ch = unix_channel(socket.to_path_buf());
        Self {
            admin: AdminClient::new(ch.clone()),
            cmp_admin: certgate_proto::cmp::cmp_admin_client::CmpAdminClient::new(ch.clone()),
            scep_admin: certgate_proto::scep::scep_admin_client::ScepAdminClient::new(ch.clone()),
            request_admin: certgate_proto::admin::request_admin_client::RequestAdminClient::new(
                ch.clone(),
            ),
            core: CoreClient::new(ch),
        }
    }

    /// Clients for the core of a data dir.
    pub fn for_dir(dd: &DataDir) -> Self {
        Self::at(&dd.core_socket_from_config())
    }

    /// Whether the core answers Admin calls (any answer but "unavailable").
    pub async fn core_answers(&self) -> bool {
        let mut admin = self.admin.clone();
        let mut req = tonic::Request::new(certgate_proto::admin::ListTenantsRequest {});
        req.set_timeout(Duration::from_secs(2));
        match tokio::time::timeout(Duration::from_secs(3), admin.list_tenants(req)).await {
            Ok(Ok(_)) => true,
            Ok(Err(s)) => RpcError::from_status(&s).kind != ErrorKind::Unavailable,
            Err(_) => false,
        }
    }
}
