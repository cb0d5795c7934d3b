//! The sidecar template: containers, init containers and volumes added to the pods that ask for
//! them, and the digest that marks a pod as injected.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Volume};
use serde::{Deserialize, Serialize};

/// Why the template cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The file cannot be read.
    #[error("cannot read the sidecar template {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML (or JSON) of the expected shape.
    #[error("the sidecar template {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_yaml::Error,
    },
    /// No container, or a container without a name.
    #[error("the sidecar template {0} needs at least one container, each with a name")]
    Empty(PathBuf),
}

/// What is injected.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Template {
    /// Appended to `spec.containers`.
    pub containers: Vec<Container>,
    /// Appended to `spec.initContainers`.
    #[serde(default)]
    pub init_containers: Vec<Container>,
    /// Appended to `spec.volumes`.
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

/// A loaded template and its digest.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// The template.
    pub template: Template,
    /// Hex SHA-256 of its JSON form (first 16 bytes), written to the pod once injected.
    pub digest: String,
}

impl Sidecar {
    /// Reads the template at `path` (YAML, or JSON, which is YAML).
    pub fn load(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read { path: path.into(), source })?;
        let template: Template =
            serde_yaml::from_str(&text).map_err(|source| TemplateError::Parse { path: path.into(), source })?;
        if template.containers.is_empty()
            || template.containers.iter().chain(&template.init_containers).any(|c| c.name.is_empty())
        {
            return Err(TemplateError::Empty(path.into()));
        }
        Ok(Self::new(template))
    }

    /// The sidecar of `template`.
    pub fn new(template: Template) -> Self {
        let json = serde_json::to_vec(&template).unwrap_or_default();
        let hash = ring::digest::digest(&ring::digest::SHA256, &json);
        let digest = hash.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self { template, digest }
    }
}
