//! cutover on a Kubernetes cluster: each slot is a Deployment made from the user's own manifest
//! ([`KubernetesPlatform`]), and traffic moves between the slots' pods through an object the
//! cluster's data plane already reads ([`routers`]): a Service's selector, a Gateway API
//! HTTPRoute, an Istio VirtualService, or an ingress-nginx canary Ingress.
//!
//! # What cutover writes, and how
//!
//! Every write is a server-side apply with the field manager [`FIELD_MANAGER`], of only the
//! fields cutover owns, so a GitOps tool that owns the rest of an object is never overwritten and
//! the cluster records who owns what (`metadata.managedFields`). Objects are read back after every
//! change; a change someone else made to cutover's fields shows in that reading, and the
//! controller's reconcile applies the table again.
//!
//! # Labels
//!
//! A slot's Deployment, its pods and its Service carry [`LABEL_APP`], [`LABEL_SLOT`] and
//! [`LABEL_VERSION`] (the version made label-safe; the exact version is in the
//! [`ANNOTATION_VERSION`] annotation) and `app.kubernetes.io/managed-by: cutover`. After a restart
//! cutover finds its slots by these labels (adoption), not by its own records.

pub mod platform;
pub mod routers;

use std::path::PathBuf;

use cutover_core::{FieldError, Slot};
use serde::{Deserialize, Serialize};

pub use kube;
pub use platform::KubernetesPlatform;

/// The field manager of every write cutover makes.
pub const FIELD_MANAGER: &str = "cutover";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_APP: &str = "cutover.dev/app";
pub const LABEL_SLOT: &str = "cutover.dev/slot";
pub const LABEL_VERSION: &str = "cutover.dev/version";
pub const ANNOTATION_VERSION: &str = "cutover.dev/version";
/// On a route object: the route table cutover last applied to it, as JSON. Reading it back with
/// the object's routing fields tells a table that is in force from one someone changed.
pub const ANNOTATION_ROUTE_TABLE: &str = "cutover.dev/route-table";

/// `[app.kubernetes]`: where the cluster is and what a slot's Deployment is made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file. Without it: `$KUBECONFIG`, `~/.kube/config`, then the in-cluster
    /// ServiceAccount (when cutover runs in a pod).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; its current context without it.
    #[serde(default)]
    pub context: Option<String>,
    /// The namespace of the app's objects; the context's namespace, else `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The app's Deployment manifest (YAML or JSON, one Deployment among its documents): the
    /// template of both slots' Deployments. Exactly one of `manifest` and `deployment`.
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// An existing Deployment in the namespace to use as the template instead of a file. It is
    /// read, never changed.
    #[serde(default)]
    pub deployment: Option<String>,
    /// The image of a release, with `{version}` for the release's version:
    /// `ghcr.io/acme/shop:{version}`.
    pub image: String,
    /// The container that runs the release (its image and environment are set); the template's
    /// first container without it.
    #[serde(default)]
    pub container: Option<String>,
    /// Pods per slot; the template's `spec.replicas`, else the release's `instances`, without it.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// A new version whose container has restarted this many times while crash-looping has
    /// failed: no need to wait for the readiness deadline.
    #[serde(default = "default_crash_loop_restarts")]
    pub crash_loop_restarts: u32,
    /// The port of the per-slot Services cutover makes (`<app>-blue`, `<app>-green`) for the
    /// weighted routers; the container's first port without it.
    #[serde(default)]
    pub service_port: Option<u16>,
}

fn default_crash_loop_restarts() -> u32 {
    3
}

impl KubernetesConfig {
    /// Every problem of the settings, fields prefixed with `prefix` (`app[0].kubernetes.`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match (&self.manifest, &self.deployment) {
            (None, None) => errors.push(FieldError::new(
                format!("{prefix}manifest"),
                "the slots' Deployments are made from the app's own Deployment: set `manifest` (a file) or `deployment` (one in the namespace)",
            )),
            (Some(_), Some(_)) => errors.push(FieldError::new(
                format!("{prefix}deployment"),
                "set `manifest` or `deployment`, not both: they name the same thing, the template of the slots' Deployments",
            )),
            _ => {}
        }
        if !self.image.contains("{version}") {
            errors.push(FieldError::new(
                format!("{prefix}image"),
                format!(
                    "{:?} has no {{version}}: every release would run the same image; write it as `registry/app:{{version}}`",
                    self.image
                ),
            ));
        }
        if let Some(ns) = &self.namespace {
            if !is_dns_label(ns) {
                errors.push(FieldError::new(
                    format!("{prefix}namespace"),
                    format!("{ns:?} is not a namespace name: lower-case letters, digits and '-', at most 63"),
                ));
            }
        }
        if let Some(name) = &self.deployment {
            if !is_dns_subdomain(name) {
                errors.push(FieldError::new(
                    format!("{prefix}deployment"),
                    format!("{name:?} is not a Deployment name: lower-case letters, digits, '-' and '.'"),
                ));
            }
        }
        if self.replicas == Some(0) {
            errors.push(FieldError::new(
                format!("{prefix}replicas"),
                "0 pods could never become ready; give at least 1, or leave it out to use the manifest's",
            ));
        }
        if self.crash_loop_restarts == 0 {
            errors.push(FieldError::new(
                format!("{prefix}crash_loop_restarts"),
                "must be at least 1 (a container that never restarted is not crash-looping)",
            ));
        }
        errors
    }
}

/// The name of `app`'s Deployment and Service in `slot`: `shop-blue`.
pub fn slot_object_name(app: &str, slot: Slot) -> String {
    format!("{app}-{slot}")
}

/// `version` made a valid label value: at most 63 characters of `[A-Za-z0-9._-]`, starting and
/// ending with an alphanumeric. The exact version goes in [`ANNOTATION_VERSION`].
pub fn version_label(version: &str) -> String {
    let mapped: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// An RFC 1123 label: names of namespaces and Services.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// An RFC 1123 subdomain: names of Deployments, Ingresses, routes.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// Why talking to the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes: reading the kubeconfig {path}: {reason}; point `kubeconfig` at a readable kubeconfig, or leave it out to use $KUBECONFIG, ~/.kube/config or the pod's ServiceAccount")]
    Kubeconfig { path: String, reason: String },
    #[error("kubernetes: no cluster configuration found ({reason}); set `[app.kubernetes] kubeconfig`, $KUBECONFIG, or run cutover in a pod with a ServiceAccount")]
    NoConfig { reason: String },
    #[error("kubernetes: {what}: {reason}")]
    Api { what: String, reason: String },
    #[error("kubernetes: the Deployment manifest {path}: {reason}")]
    Manifest { path: String, reason: String },
}

impl KubeError {
    pub(crate) fn api(what: impl Into<String>, error: kube::Error) -> Self {
        KubeError::Api {
            what: what.into(),
            reason: describe_api_error(&error),
        }
    }
}

/// A client error as a person reads it: the API server's own message and reason when it sent
/// one, with what to do for the ones that have a usual cause.
pub(crate) fn describe_api_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let hint = match status.code {
                401 => "; the credentials of the kubeconfig were refused: renew the token or certificate",
                403 => "; cutover's ServiceAccount lacks a permission: see the Role in docs/kubernetes.md",
                404 => "; the object or its API does not exist in the cluster (a CRD not installed?)",
                409 => "; another writer changed the object at the same time: try again",
                422 => "; the cluster refused the object as invalid: if a field that cannot change (a Deployment's selector) changed in the manifest, keep it as it was, or delete the slot's Deployment while it serves no traffic",
                _ => "",
            };
            format!("{} ({} {}){hint}", status.message, status.code, status.reason)
        }
        other => format!("{other}; is the API server reachable from here?"),
    }
}

/// A client for the cluster `config` names.
pub async fn connect(config: &KubernetesConfig) -> Result<(kube::Client, String), KubeError> {
    let options = kube::config::KubeConfigOptions {
        context: config.context.clone(),
        cluster: None,
        user: None,
    };
    let client_config = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| KubeError::Kubeconfig {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        None if config.context.is_some() => {
            kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| KubeError::NoConfig {
                    reason: e.to_string(),
                })?
        }
        None => kube::Config::infer().await.map_err(|e| KubeError::NoConfig {
            reason: e.to_string(),
        })?,
    };
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| client_config.default_namespace.clone());
    let client = kube::Client::try_from(client_config).map_err(|e| KubeError::NoConfig {
        reason: e.to_string(),
    })?;
    Ok((client, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_labels_are_valid_label_values() {
        assert_eq!(version_label("v1.2.3"), "v1.2.3");
        assert_eq!(version_label("2026-12-02+build/7"), "2026-12-02_build_7");
        assert_eq!(version_label("-x-"), "x");
        assert_eq!(version_label(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn every_problem_is_reported() {
        let config = KubernetesConfig {
            kubeconfig: None,
            context: None,
            namespace: Some("Shop".into()),
            manifest: None,
            deployment: None,
            image: "shop:latest".into(),
            container: None,
            replicas: Some(0),
            crash_loop_restarts: 0,
            service_port: None,
        };
        let fields: Vec<_> = config
            .validate("app[0].kubernetes.")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "app[0].kubernetes.manifest",
                "app[0].kubernetes.image",
                "app[0].kubernetes.namespace",
                "app[0].kubernetes.replicas",
                "app[0].kubernetes.crash_loop_restarts",
            ]
        );
    }
}
