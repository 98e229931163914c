//! Apps on Kubernetes: one cluster connection per app, shared by its router and its platform.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cutover_kube::routers::KubeRouter;
use cutover_kube::{KubernetesConfig, KubernetesPlatform};

use crate::config::{AppConfig, RouterConfig};
use crate::ServeError;

/// The connections made for the apps' routers, kept for their platforms.
#[derive(Default)]
pub(crate) struct Clusters {
    by_app: BTreeMap<String, (cutover_kube::kube::Client, String, KubernetesConfig)>,
}

impl Clusters {
    /// The router of an app routed by a Kubernetes object, connecting to its cluster; `None`
    /// for other apps.
    pub(crate) async fn router(
        &mut self,
        app: &AppConfig,
        config_dir: &Path,
    ) -> Result<Option<Arc<dyn cutover_router::Router>>, ServeError> {
        let Some(settings) = &app.kubernetes else {
            return Ok(None);
        };
        if !app.router.is_kubernetes() {
            return Ok(None);
        }
        let mut settings = settings.clone();
        // Relative paths are the configuration file's, like the token files'.
        for path in [&mut settings.manifest, &mut settings.kubeconfig]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = config_dir.join(&*path);
            }
        }
        let (client, namespace) =
            cutover_kube::connect(&settings)
                .await
                .map_err(|e| ServeError::Kubernetes {
                    app: app.name.clone(),
                    reason: e.to_string(),
                })?;
        let name = &app.name;
        let router = match &app.router {
            RouterConfig::KubernetesService(c) => KubeRouter::service(client.clone(), &namespace, name, c),
            RouterConfig::GatewayApi(c) => KubeRouter::gateway(client.clone(), &namespace, name, c),
            RouterConfig::Istio(c) => KubeRouter::istio(client.clone(), &namespace, name, c),
            RouterConfig::IngressNginx(c) => KubeRouter::ingress_nginx(client.clone(), &namespace, name, c),
            _ => return Ok(None),
        };
        self.by_app.insert(name.clone(), (client, namespace, settings));
        Ok(Some(Arc::new(router)))
    }

    /// The platform of an app whose router [`Clusters::router`] made.
    pub(crate) fn platform(
        &self,
        app: &AppConfig,
    ) -> Result<Arc<dyn cutover_platform::Platform>, ServeError> {
        let (client, namespace, settings) =
            self.by_app.get(&app.name).ok_or_else(|| ServeError::Kubernetes {
                app: app.name.clone(),
                reason: "platform = \"kubernetes\" needs a Kubernetes router ([app.router] kind)".into(),
            })?;
        Ok(Arc::new(KubernetesPlatform::new(
            client.clone(),
            namespace.clone(),
            settings.clone(),
        )))
    }
}
