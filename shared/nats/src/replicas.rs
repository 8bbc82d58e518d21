//! How many copies of each bucket and stream JetStream keeps (its replicas), and a clear
//! refusal when the servers cannot hold that many.
//!
//! A replica count is checked against the servers only when a resource is created or its count
//! changes: a standalone server holds 1 copy; a cluster at most one per server its clients are
//! told of (the `connect_urls` of the server's INFO, its own included). Resources that already
//! have the wanted count are not checked, so a replica restarting while one server of the
//! cluster is down still starts. Whatever the check cannot see (a server without JetStream, a
//! cluster that does not advertise its servers) is refused by JetStream itself, and that error
//! is turned into the same [`NatsError::Replicas`].

use crate::error::{BoxError, NatsError};
use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use std::error::Error as StdError;

/// JetStream refuses more replicas than 5.
pub const MAX_REPLICAS: usize = 5;

/// The replica count asked for and what the connected server says about its cluster.
pub(crate) struct ReplicaPlan {
    wanted: Option<usize>,
    servers: Servers,
}

enum Servers {
    /// Not clustered: one copy at most.
    Standalone { name: String },
    /// Clustered; `known` = the servers the cluster advertises (None if it does not).
    Cluster { name: String, known: Option<usize> },
}

impl ReplicaPlan {
    /// The plan for `wanted` replicas (`None`: keep existing resources' count, 1 for new ones)
    /// on the server `client` is connected to.
    pub(crate) fn new(client: &async_nats::Client, wanted: Option<usize>) -> Self {
        let info = client.server_info();
        let servers = match info.cluster {
            None => Servers::Standalone {
                name: info.server_name,
            },
            Some(name) => {
                let mut urls = info.connect_urls.clone();
                urls.sort();
                urls.dedup();
                let known = (!urls.is_empty()).then_some(urls.len());
                Servers::Cluster { name, known }
            }
        };
        Self { wanted, servers }
    }

    /// The replica count `resource` (JetStream stream `stream`) is to have: the wanted one, else
    /// what it has, else 1. Refused when it is a new count the servers cannot hold.
    pub(crate) async fn target(
        &self,
        jetstream: &jetstream::Context,
        stream: &str,
        resource: &str,
    ) -> Result<usize, NatsError> {
        let existing = existing_replicas(jetstream, stream)
            .await
            .map_err(|error| NatsError::provision(resource, error))?;
        let target = self.wanted.or(existing).unwrap_or(1);
        if existing != Some(target) {
            self.check(resource, target)?;
        }
        Ok(target)
    }

    fn check(&self, resource: &str, replicas: usize) -> Result<(), NatsError> {
        let refuse = |reason: String| NatsError::Replicas {
            resource: resource.to_owned(),
            replicas,
            reason,
            source: None,
        };
        if replicas == 0 {
            return Err(refuse("at least 1 is needed".to_owned()));
        }
        if replicas > MAX_REPLICAS {
            return Err(refuse(format!("JetStream keeps at most {MAX_REPLICAS}")));
        }
        match &self.servers {
            Servers::Standalone { name } if replicas > 1 => Err(refuse(format!(
                "the server {name} is not part of a cluster, so it holds 1 copy"
            ))),
            Servers::Cluster {
                name,
                known: Some(known),
            } if replicas > *known => Err(refuse(format!(
                "the cluster {name} has {known} server(s) reachable"
            ))),
            _ => Ok(()),
        }
    }
}

/// The replicas of stream `name`, `None` if it does not exist.
async fn existing_replicas(
    jetstream: &jetstream::Context,
    name: &str,
) -> Result<Option<usize>, GetStreamError> {
    match jetstream.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().config.num_replicas.max(1))),
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(api)
                if api.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(error),
        },
    }
}

impl NatsError {
    /// A failed creation or update of `resource` with `replicas`: JetStream's refusals of the
    /// replica count (10074 not clustered, 10005 no suitable peers, 10023 insufficient
    /// resources) become [`NatsError::Replicas`], anything else [`NatsError::provision`].
    pub fn provision_replicated(
        resource: &str,
        replicas: usize,
        error: impl Into<BoxError>,
    ) -> NatsError {
        let error = error.into();
        let reason = match api_error_code(error.as_ref()) {
            Some(ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED) => {
                "the server is not part of a cluster, so it holds 1 copy"
            }
            Some(ErrorCode::CLUSTER_NO_PEERS | ErrorCode::INSUFFICIENT_RESOURCES) => {
                "JetStream found too few servers to place the copies on"
            }
            _ => return NatsError::provision(resource, error),
        };
        NatsError::Replicas {
            resource: resource.to_owned(),
            replicas,
            reason: reason.to_owned(),
            source: Some(error),
        }
    }
}

/// The JetStream API error code somewhere in `error`'s chain.
fn api_error_code(error: &(dyn StdError + 'static)) -> Option<ErrorCode> {
    use jetstream::context::CreateStreamError;
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(api) = current.downcast_ref::<jetstream::Error>() {
            return Some(api.error_code());
        }
        if let Some(create) = current.downcast_ref::<CreateStreamError>()
            && let jetstream::context::CreateStreamErrorKind::JetStream(api) = create.kind()
        {
            return Some(api.error_code());
        }
        next = current.source();
    }
    None
}
