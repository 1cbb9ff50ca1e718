//! The etcd client as the `fleet:` block asks for it: endpoints, TLS files and
//! credentials, each read error naming its field.

use std::{path::Path, time::Duration};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::FleetError;
use crate::config::{FleetConfig, check_gateway_id};

/// The host name, the default gateway id.
pub fn hostname() -> Result<String, FleetError> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| setup("gateway_id", format!("no gateway_id and no host name: {e}")))?
        .trim()
        .to_owned();
    check_gateway_id(&name).map_err(|reason| {
        setup(
            "gateway_id",
            format!("not set, and the host name {reason}: set fleet.gateway_id"),
        )
    })?;
    Ok(name)
}

fn setup(field: &'static str, reason: String) -> FleetError {
    FleetError::Setup { field, reason }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|e| setup(field, format!("cannot read {}: {e}", path.display())))
}

pub async fn client(config: &FleetConfig) -> Result<Client, FleetError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_require_leader(true);
    if let Some(tls) = &config.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca_file {
            t = t.ca_certificate(Certificate::from_pem(read("tls.ca_file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            t = t.identity(Identity::from_pem(
                read("tls.cert_file", cert)?,
                read("tls.key_file", key)?,
            ));
        }
        options = options.with_tls(t);
    }
    if let Some(path) = &config.credentials_file {
        let text = String::from_utf8(read("credentials_file", path)?).map_err(|_| {
            setup(
                "credentials_file",
                format!("{} is not text", path.display()),
            )
        })?;
        let Some((user, password)) = text.trim().split_once(':') else {
            return Err(setup(
                "credentials_file",
                format!("{} must hold user:password", path.display()),
            ));
        };
        options = options.with_user(user, password);
    }
    // Without credentials this does not dial yet: etcd may still be starting.
    Client::connect(&config.endpoints, Some(options))
        .await
        .map_err(|e| setup("endpoints", format!("cannot set up the etcd client: {e}")))
}
