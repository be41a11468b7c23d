//! The core's client for `certgate-signer`. Every failure to reach it is `SignerUnavailable`
//! (UNAVAILABLE with retry-after on the wire), never a fallback (I-5); typed refusals from the
//! signer (key policy, unknown key) pass through with their rule.

use std::time::Duration;

use certgate_proto::signer::decrypter_client::DecrypterClient;
use certgate_proto::signer::signer_client::SignerClient;
use certgate_proto::signer::{
    Algorithm, GenerateKeyRequest, KeyInfo, KeyPolicy, KeyRole, KeyType, PublicKeyRequest,
    SignBatchRequest, SignRequest,
};
use certgate_proto::{ErrorKind, RpcError};
use tonic::transport::Channel;

use crate::config::SignerEndpoint;
use crate::error::{CoreError, Result};

/// A cheap-to-clone signer client.
#[derive(Clone)]
pub struct Signer {
    client: SignerClient<Channel>,
    decrypter: DecrypterClient<Channel>,
    timeout: Duration,
}

fn map_status(s: tonic::Status) -> CoreError {
    let e = RpcError::from_status(&s);
    match e.kind {
        ErrorKind::Unavailable | ErrorKind::Unspecified | ErrorKind::RateLimited => {
            CoreError::SignerUnavailable(format!("{:?}: {}", s.code(), s.message()))
        }
        _ => CoreError::Signer(e),
    }
}

impl Signer {
    /// A client on an existing channel.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            client: SignerClient::new(channel.clone()).max_decoding_message_size(16 * 1024 * 1024),
            decrypter: DecrypterClient::new(channel),
            timeout,
        }
    }

    /// Connects (lazily) to the configured endpoint.
    pub fn connect(endpoint: &SignerEndpoint, timeout: Duration) -> anyhow::Result<Self> {
        let channel = match endpoint {
            SignerEndpoint::Unix(path) => certgate_proto::transport::unix_channel(path.clone()),
            SignerEndpoint::Tls {
                addr,
                server_name,
                ca,
                cert,
                key,
            } => {
                let config = certgate_proto::transport::client_tls_config(
                    Some(&std::fs::read(cert)?),
                    Some(&std::fs::read(key)?),
                    &std::fs::read(ca)?,
                )?;
                let name = rustls::pki_types::ServerName::try_from(server_name.clone())?;
                certgate_proto::transport::tls_channel(*addr, name, config)
            }
        };
        Ok(Self::new(channel, timeout))
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    /// One signature.
    pub async fn sign(&self, key_id: &str, alg: Algorithm, message: Vec<u8>) -> Result<Vec<u8>> {
        let r = self.req(SignRequest {
            key_id: key_id.to_owned(),
            algorithm: alg as i32,
            message,
        });
        let mut c = self.client.clone();
        match tokio::time::timeout(self.timeout, c.sign(r)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner().signature),
            Ok(Err(s)) => Err(map_status(s)),
            Err(_) => Err(CoreError::SignerUnavailable("deadline".into())),
        }
    }

    /// Key-transport decryption with a SCEP_RA key (the signer's Decrypter service). The
    /// plaintext is a secret: it comes back in a zeroizing buffer.
    pub async fn decrypt(
        &self,
        key_id: &str,
        scheme: certgate_proto::signer::KeyTransport,
        ciphertext: Vec<u8>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let r = self.req(certgate_proto::signer::DecryptRequest {
            key_id: key_id.to_owned(),
            scheme: scheme as i32,
            ciphertext,
        });
        let mut c = self.decrypter.clone();
        match tokio::time::timeout(self.timeout, c.decrypt(r)).await {
            Ok(Ok(resp)) => Ok(zeroize::Zeroizing::new(resp.into_inner().plaintext)),
            Ok(Err(s)) => Err(map_status(s)),
            Err(_) => Err(CoreError::SignerUnavailable("deadline".into())),
        }
    }

    /// Many signatures with one key.
    pub async fn sign_batch(
        &self,
        key_id: &str,
        alg: Algorithm,
        messages: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>> {
        let r = self.req(SignBatchRequest {
            key_id: key_id.to_owned(),
            algorithm: alg as i32,
            messages,
        });
        let mut c = self.client.clone();
        match tokio::time::timeout(self.timeout, c.sign_batch(r)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner().signatures),
            Ok(Err(s)) => Err(map_status(s)),
            Err(_) => Err(CoreError::SignerUnavailable("deadline".into())),
        }
    }

    /// A key's public half and metadata; None when the signer does not know it.
    pub async fn public_key(&self, key_id: &str) -> Result<Option<KeyInfo>> {
        let r = self.req(PublicKeyRequest {
            key_id: key_id.to_owned(),
        });
        let mut c = self.client.clone();
        match tokio::time::timeout(self.timeout, c.public_key(r)).await {
            Ok(Ok(resp)) => Ok(Some(resp.into_inner())),
            Ok(Err(s)) => match map_status(s) {
                CoreError::Signer(e) if e.kind == ErrorKind::NotFound => Ok(None),
                other => Err(other),
            },
            Err(_) => Err(CoreError::SignerUnavailable("deadline".into())),
        }
    }

    /// Generates a key, or returns the existing one with this id if it has the same role and
    /// type (so a retried ceremony or bootstrap converges instead of failing).
    pub async fn ensure_key(
        &self,
        key_id: &str,
        tenant: &str,
        role: KeyRole,
        key_type: KeyType,
        policy: Option<KeyPolicy>,
    ) -> Result<KeyInfo> {
        let r = self.req(GenerateKeyRequest {
            key_id: key_id.to_owned(),
            tenant: tenant.to_owned(),
            role: role as i32,
            key_type: key_type as i32,
            backend: 0,
            policy,
        });
        let mut c = self.client.clone();
        let generated = match tokio::time::timeout(self.timeout * 6, c.generate_key(r)).await {
            Ok(Ok(resp)) => return Ok(resp.into_inner()),
            Ok(Err(s)) => map_status(s),
            Err(_) => return Err(CoreError::SignerUnavailable("deadline".into())),
        };
        match generated {
            CoreError::Signer(e) if e.kind == ErrorKind::AlreadyExists => {
                let info = self.public_key(key_id).await?.ok_or_else(|| {
                    CoreError::SignerUnavailable("key vanished after ALREADY_EXISTS".into())
                })?;
                if info.role != role as i32 || info.key_type != key_type as i32 {
                    return Err(CoreError::exists(
                        "signer.key_exists",
                        format!("signer key {key_id:?} exists with another role or type"),
                    ));
                }
                Ok(info)
            }
            other => Err(other),
        }
    }
}
