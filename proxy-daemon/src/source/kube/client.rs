//! The API client: from a kubeconfig file, or in-cluster.

use std::path::Path;

use ::kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::KubeSourceError;

/// A client for the cluster a kubeconfig file's current context names.
/// Must be called inside a tokio runtime (the client spawns its workers).
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, KubeSourceError> {
    let kubeconfig =
        Kubeconfig::read_from(path).map_err(|source| KubeSourceError::ReadKubeconfig {
            path: path.to_owned(),
            source,
        })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| KubeSourceError::Kubeconfig {
            path: path.to_owned(),
            source,
        })?;
    client(config)
}

/// A client from the pod's service account and `KUBERNETES_SERVICE_HOST`
/// / `KUBERNETES_SERVICE_PORT`. sluiced is the service proxy, so those must
/// name the API server itself, not the `kubernetes` Service's ClusterIP
/// (which only works once a proxy is running): the DaemonSet sets them.
pub fn client_in_cluster() -> Result<Client, KubeSourceError> {
    client(Config::incluster().map_err(KubeSourceError::InCluster)?)
}

fn client(config: Config) -> Result<Client, KubeSourceError> {
    Client::try_from(config).map_err(KubeSourceError::Client)
}
