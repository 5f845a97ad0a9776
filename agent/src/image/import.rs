//! `skiff-agent image import`: OCI-layout and docker-save archives, for nodes without a registry.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Image, ImageStore, Reference, digest_hex};

/// The platform this node runs.
pub fn platform() -> (&'static str, &'static str) {
    ("linux", crate::node::capacity::arch())
}

/// Whether an index entry's platform fits this node.
pub fn platform_matches(p: &Value) -> bool {
    let (os, arch) = platform();
    p["os"].as_str() == Some(os) && p["architecture"].as_str() == Some(arch)
}

/// Installs one image manifest whose blobs (config and layers) are available as files.
pub fn install(
    store: &ImageStore,
    manifest_bytes: &[u8],
    manifest_digest: Option<&str>,
    blob: &dyn Fn(&str) -> anyhow::Result<PathBuf>,
    names: &[String],
) -> anyhow::Result<Image> {
    let digest = store.put_blob(manifest_bytes, manifest_digest)?;
    let manifest: Value = serde_json::from_slice(manifest_bytes).context("the image manifest is not JSON")?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("the manifest has no config")?
        .to_string();
    let config_path = blob(&config_digest)?;
    let config_bytes =
        std::fs::read(&config_path).with_context(|| format!("reading config {config_digest}"))?;
    store.put_blob(&config_bytes, Some(&config_digest))?;
    let config: Value = serde_json::from_slice(&config_bytes).context("the image config is not JSON")?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .context("the image config has no rootfs.diff_ids")?
        .iter()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    let layers = manifest["layers"]
        .as_array()
        .context("the manifest has no layers")?;
    if layers.len() != diff_ids.len() {
        bail!(
            "the manifest lists {} layers but the config {}",
            layers.len(),
            diff_ids.len()
        );
    }
    let mut size = 0;
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        if store.has_layer(diff_id) {
            continue;
        }
        let d = layer["digest"].as_str().context("a layer has no digest")?;
        let path = blob(d)?;
        size += store
            .unpack_layer(&path, diff_id)
            .with_context(|| format!("layer {d}"))?;
    }
    let image = Image {
        digest,
        config_digest,
        layers: diff_ids,
        config: config.get("config").cloned().unwrap_or(Value::Null),
        size,
    };
    store.add_image(&image, names)?;
    Ok(image)
}

/// Imports every image of an archive; returns the images with the names they got.
pub fn import(
    store: &ImageStore,
    file: &Path,
    name: Option<&str>,
) -> anyhow::Result<Vec<(Image, Vec<String>)>> {
    let name = name
        .map(Reference::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let scratch = store.scratch()?;
    let dir = scratch.path();
    let reader = super::open_tarball(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut archive = tar::Archive::new(reader);
    archive
        .unpack(dir)
        .with_context(|| format!("{} is not a tar archive", file.display()))?;
    let _lock = store.lock()?;
    if dir.join("index.json").exists() {
        import_oci(store, dir, name.as_ref())
    } else if dir.join("manifest.json").exists() {
        import_docker(store, dir, name.as_ref())
    } else {
        bail!(
            "{} is neither an OCI layout nor a docker-save archive",
            file.display()
        )
    }
}

fn blob_in(dir: &Path) -> impl Fn(&str) -> anyhow::Result<PathBuf> + '_ {
    move |d: &str| {
        let p = dir.join("blobs/sha256").join(digest_hex(d)?);
        if !p.exists() {
            bail!("the archive lacks blob {d}");
        }
        Ok(p)
    }
}

fn names_for(annotated: Option<&str>, explicit: Option<&Reference>) -> Vec<String> {
    if let Some(r) = explicit {
        return vec![r.to_string()];
    }
    annotated
        .filter(|n| n.contains('/') || n.contains(':'))
        .and_then(|n| Reference::parse(n).ok())
        .map(|r| vec![r.to_string()])
        .unwrap_or_default()
}

fn import_oci(
    store: &ImageStore,
    dir: &Path,
    name: Option<&Reference>,
) -> anyhow::Result<Vec<(Image, Vec<String>)>> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json"))?).context("index.json is not JSON")?;
    let blob = blob_in(dir);
    let mut out = Vec::new();
    for desc in index["manifests"]
        .as_array()
        .context("index.json has no manifests")?
    {
        let annotations = &desc["annotations"];
        let annotated = annotations["io.containerd.image.name"]
            .as_str()
            .or_else(|| annotations["org.opencontainers.image.ref.name"].as_str());
        let names = names_for(annotated, name);
        let mut digest = desc["digest"]
            .as_str()
            .context("an index entry has no digest")?
            .to_string();
        let mut bytes = std::fs::read(blob(&digest)?)?;
        // A multi-platform image: pick this node's platform.
        for _ in 0..2 {
            let v: Value = serde_json::from_slice(&bytes)?;
            let Some(list) = v["manifests"].as_array() else {
                break;
            };
            let chosen = list
                .iter()
                .find(|m| platform_matches(&m["platform"]))
                .with_context(|| format!("no manifest for {}/{} in {digest}", platform().0, platform().1))?;
            digest = chosen["digest"]
                .as_str()
                .context("an index entry has no digest")?
                .to_string();
            bytes = std::fs::read(blob(&digest)?)?;
        }
        let image = install(store, &bytes, Some(&digest), &blob, &names)?;
        out.push((image, names));
    }
    Ok(out)
}

fn import_docker(
    store: &ImageStore,
    dir: &Path,
    name: Option<&Reference>,
) -> anyhow::Result<Vec<(Image, Vec<String>)>> {
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)
        .context("manifest.json is not JSON")?;
    let mut out = Vec::new();
    for entry in manifest.as_array().context("manifest.json is not a list")? {
        let config_path = dir.join(entry["Config"].as_str().context("an entry has no Config")?);
        let config_bytes = std::fs::read(&config_path)?;
        let config_digest = super::digest_of(&config_bytes);
        let mut files = std::collections::BTreeMap::new();
        files.insert(config_digest.clone(), config_path);
        let mut layers = Vec::new();
        for l in entry["Layers"].as_array().context("an entry has no Layers")? {
            let p = dir.join(l.as_str().context("a layer path is not a string")?);
            let mut h = super::Hashing::new(std::fs::File::open(&p)?);
            std::io::copy(&mut h, &mut std::io::sink())?;
            let size = h.count;
            let d = h.finish();
            layers.push(
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size}),
            );
            files.insert(d, p);
        }
        // docker save carries no manifest: write the OCI manifest it stands for.
        let m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": layers,
        });
        let tags: Vec<&str> = entry["RepoTags"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut names: Vec<String> = tags.iter().flat_map(|t| names_for(Some(t), name)).collect();
        if names.is_empty() {
            names = names_for(None, name);
        }
        names.dedup();
        let lookup = |d: &str| {
            files
                .get(d)
                .cloned()
                .with_context(|| format!("the archive lacks blob {d}"))
        };
        let image = install(store, &serde_json::to_vec(&m)?, None, &lookup, &names)?;
        out.push((image, names));
    }
    Ok(out)
}
