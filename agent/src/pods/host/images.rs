//! A container's image: pulled (with the pod's pull secrets) or found in the node's store, as its
//! `imagePullPolicy` says, and why not when it cannot be had.

use super::*;
use crate::image::Reference;
use crate::pods::runtime::PullFailure;

impl Host {
    pub(super) async fn ensure_image(&self, pod: &Value, c: &Value) -> anyhow::Result<Image> {
        let image = c["image"].as_str().unwrap_or_default();
        let reference = Reference::parse(image).map_err(PullFailure::InvalidName)?;
        let policy = c["imagePullPolicy"]
            .as_str()
            .unwrap_or(if reference.tag.as_deref() == Some("latest") {
                "Always"
            } else {
                "IfNotPresent"
            });
        let local = self.shared.images.resolve(&reference)?;
        match (policy, local) {
            ("Never", Some(i)) | ("IfNotPresent", Some(i)) => return Ok(i),
            ("Never", None) => {
                return Err(PullFailure::NeverPull(format!(
                    "Container image \"{image}\" is not present with pull policy of Never"
                ))
                .into());
            }
            _ => {}
        }
        let lock = {
            let mut pulls = self.shared.pulls.lock().await;
            pulls.entry(reference.to_string()).or_default().clone()
        };
        let _held = lock.lock().await;
        if policy != "Always"
            && let Some(i) = self.shared.images.resolve(&reference)?
        {
            return Ok(i);
        }
        let creds = self.pull_credentials(pod, &reference).await;
        self.event("Normal", "Pulling", &format!("Pulling image \"{image}\""))
            .await;
        let started = Instant::now();
        match self
            .shared
            .puller
            .pull(&self.shared.images, &reference, creds.as_ref())
            .await
        {
            Ok(i) => {
                self.event(
                    "Normal",
                    "Pulled",
                    &format!(
                        "Successfully pulled image \"{image}\" in {:.3}s",
                        started.elapsed().as_secs_f64()
                    ),
                )
                .await;
                Ok(i)
            }
            Err(e) => {
                Err(PullFailure::Pull(format!("failed to pull and unpack image \"{image}\": {e:#}")).into())
            }
        }
    }

    async fn pull_credentials(
        &self,
        pod: &Value,
        reference: &Reference,
    ) -> Option<crate::image::pull::Credentials> {
        let lookup = self.lookup();
        for s in pod["spec"]["imagePullSecrets"].as_array().into_iter().flatten() {
            let name = s["name"].as_str().unwrap_or_default();
            let Ok(Some(secret)) = lookup.secret(name).await else {
                continue;
            };
            for key in [".dockerconfigjson", ".dockercfg"] {
                let Some(data) = secret["data"][key].as_str() else {
                    continue;
                };
                use base64::Engine;
                let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(data) else {
                    continue;
                };
                let Ok(cfg) = serde_json::from_slice::<Value>(&raw) else {
                    continue;
                };
                if let Some(c) = crate::image::pull::credentials_from_docker_config(&cfg, &reference.registry)
                {
                    return Some(c);
                }
            }
        }
        None
    }
}

pub(super) fn image_env(image: &Image) -> Vec<String> {
    image.config["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect()
}
