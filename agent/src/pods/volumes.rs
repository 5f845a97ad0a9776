//! Pod volumes: emptyDir (disk or memory), hostPath, configMap, secret, downwardAPI and projected.
//! Files of configMap/secret/downwardAPI volumes are written the kubelet's way (a `..data` symlink
//! swapped atomically to a new timestamped directory), so updates reach running containers whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::Value;

use super::env::{Lookup, field_ref};

/// The files a volume holds: relative path → (content, mode, owner: the pod's user for a
/// service account token, else root).
type Files = BTreeMap<String, (Vec<u8>, u32, Option<u32>)>;

/// The kubelet's `getFSUser`: the user every container of the pod runs as, when the pod says
/// (`runAsUser`, the same for all of them).
fn fs_user(pod: &Value) -> Option<u32> {
    let pod_user = pod["spec"]["securityContext"]["runAsUser"].as_u64();
    let mut users = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["spec"]["initContainers"].as_array().into_iter().flatten())
        .map(|c| c["securityContext"]["runAsUser"].as_u64().or(pod_user));
    let first = users.next()??;
    users
        .all(|u| u == Some(first))
        .then(|| u32::try_from(first).ok())?
}

/// Why a volume could not be set up, as the pod's events and statuses say it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MountError(pub String);

fn items(
    source: &Value,
    data: &BTreeMap<String, Vec<u8>>,
    default_mode: u32,
    kind: &str,
    name: &str,
) -> anyhow::Result<Files> {
    let mut files = Files::new();
    match source["items"].as_array() {
        Some(list) => {
            for item in list {
                let key = item["key"].as_str().unwrap_or_default();
                let path = item["path"].as_str().unwrap_or(key);
                let mode = item["mode"].as_u64().map(|m| m as u32).unwrap_or(default_mode);
                match data.get(key) {
                    Some(v) => {
                        files.insert(path.to_string(), (v.clone(), mode, None));
                    }
                    None if source["optional"].as_bool() == Some(true) => {}
                    None => bail!(MountError(
                        format!("configmap references non-existent config key: {key}")
                            .replace("configmap", kind)
                    )),
                }
            }
        }
        None => {
            for (k, v) in data {
                files.insert(k.clone(), (v.clone(), default_mode, None));
            }
        }
    }
    let _ = name;
    Ok(files)
}

async fn config_map_files(
    lookup: &Lookup<'_>,
    source: &Value,
    default_mode: u32,
) -> anyhow::Result<Option<Files>> {
    let name = source["name"].as_str().unwrap_or_default();
    match lookup.config_map(name).await? {
        Some(cm) => {
            let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (k, v) in cm["data"].as_object().into_iter().flatten() {
                data.insert(k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec());
            }
            for (k, v) in cm["binaryData"].as_object().into_iter().flatten() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .unwrap_or_default();
                data.insert(k.clone(), bytes);
            }
            Ok(Some(items(source, &data, default_mode, "configmap", name)?))
        }
        None if source["optional"].as_bool() == Some(true) => Ok(Some(Files::new())),
        None => Err(MountError(format!("configmap \"{name}\" not found")).into()),
    }
}

async fn secret_files(
    lookup: &Lookup<'_>,
    source: &Value,
    name: &str,
    default_mode: u32,
) -> anyhow::Result<Option<Files>> {
    match lookup.secret(name).await? {
        Some(s) => {
            let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (k, v) in s["data"].as_object().into_iter().flatten() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .unwrap_or_default();
                data.insert(k.clone(), bytes);
            }
            Ok(Some(items(source, &data, default_mode, "secret", name)?))
        }
        None if source["optional"].as_bool() == Some(true) => Ok(Some(Files::new())),
        None => Err(MountError(format!("secret \"{name}\" not found")).into()),
    }
}

fn downward_files(pod: &Value, source: &Value, default_mode: u32) -> anyhow::Result<Files> {
    let mut files = Files::new();
    for item in source["items"].as_array().into_iter().flatten() {
        let path = item["path"].as_str().unwrap_or_default().to_string();
        let mode = item["mode"].as_u64().map(|m| m as u32).unwrap_or(default_mode);
        let value = if let Some(f) = item["fieldRef"]["fieldPath"].as_str() {
            field_ref(pod, f)?
        } else if item["resourceFieldRef"].is_object() {
            super::env::resource_field_ref(pod, &item["resourceFieldRef"], None)?
        } else {
            String::new()
        };
        files.insert(path, (value.into_bytes(), mode, None));
    }
    Ok(files)
}

/// The files a configMap/secret/downwardAPI/projected volume should hold now (None: not such a volume).
pub async fn desired_files(
    lookup: &Lookup<'_>,
    pod: &Value,
    volume: &Value,
) -> anyhow::Result<Option<Files>> {
    let mode_of = |v: &Value| v["defaultMode"].as_u64().map(|m| m as u32).unwrap_or(0o644);
    if let Some(cm) = volume.get("configMap") {
        return config_map_files(lookup, cm, mode_of(cm)).await;
    }
    if let Some(s) = volume.get("secret") {
        let name = s["secretName"].as_str().unwrap_or_default();
        return secret_files(lookup, s, name, mode_of(s)).await;
    }
    if let Some(d) = volume.get("downwardAPI") {
        return Ok(Some(downward_files(pod, d, mode_of(d))?));
    }
    if let Some(p) = volume.get("projected") {
        let default_mode = mode_of(p);
        let mut all = Files::new();
        for source in p["sources"].as_array().into_iter().flatten() {
            let part = if let Some(cm) = source.get("configMap") {
                config_map_files(lookup, cm, default_mode)
                    .await?
                    .unwrap_or_default()
            } else if let Some(s) = source.get("secret") {
                secret_files(lookup, s, s["name"].as_str().unwrap_or_default(), default_mode)
                    .await?
                    .unwrap_or_default()
            } else if let Some(d) = source.get("downwardAPI") {
                downward_files(pod, d, default_mode)?
            } else if let Some(t) = source.get("serviceAccountToken") {
                let path = t["path"].as_str().unwrap_or("token").to_string();
                let token = lookup.service_account_token(pod, t).await?;
                // As the kubelet: the token is its user's alone when the pod names a user or a
                // group (the group gets read through fsGroup ownership).
                let user = fs_user(pod);
                let has_group = pod["spec"]["securityContext"]["fsGroup"].is_u64();
                let mode = if user.is_some() || has_group {
                    0o600
                } else {
                    default_mode
                };
                Files::from([(path, (token.into_bytes(), mode, user))])
            } else if let Some(ctb) = source.get("clusterTrustBundle") {
                let path = ctb["path"].as_str().unwrap_or("ca.crt").to_string();
                Files::from([(path, (lookup.ca_pem().as_bytes().to_vec(), default_mode, None))])
            } else {
                Files::new()
            };
            all.extend(part);
        }
        return Ok(Some(all));
    }
    Ok(None)
}

/// Writes `files` into `dir` atomically (the kubelet's `..data` layout), owned by the pod's
/// `fsGroup` when it has one (group-readable, [`set_ownership`]). Returns whether anything changed.
pub fn write_files(dir: &Path, files: &Files, fs_group: Option<u32>) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    if let Some(gid) = fs_group
        && !owned_by(dir, gid, true)
    {
        set_ownership(dir, gid, true)?;
    }
    let group_mask = if fs_group.is_some() { 0o440 } else { 0 };
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok();
    if let Some(cur) = &current {
        let cur_dir = dir.join(cur);
        let mut same = true;
        let mut existing = 0;
        for entry in walk(&cur_dir) {
            existing += 1;
            let rel = entry
                .strip_prefix(&cur_dir)
                .unwrap_or(&entry)
                .to_string_lossy()
                .into_owned();
            let mode = std::fs::metadata(&entry)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0);
            match files.get(&rel) {
                Some((content, m, owner))
                    if std::fs::read(&entry).ok().as_deref() == Some(content)
                        && (*m | group_mask) == mode
                        && std::fs::metadata(&entry).is_ok_and(|meta| {
                            std::os::unix::fs::MetadataExt::uid(&meta) == owner.unwrap_or(0)
                        }) => {}
                _ => same = false,
            }
        }
        if same && existing == files.len() {
            return Ok(false);
        }
    }
    let stamp = format!("..{}", time::OffsetDateTime::now_utc().unix_timestamp_nanos());
    let new_dir = dir.join(&stamp);
    std::fs::create_dir_all(&new_dir)?;
    for (rel, (content, mode, owner)) in files {
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            bail!(MountError(format!("invalid path {rel:?} in volume")));
        }
        let p = new_dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, content)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&p, Some(*uid), None)?;
        }
    }
    if let Some(gid) = fs_group {
        set_ownership(&new_dir, gid, true)?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;
    // Top-level names point through ..data.
    let mut tops: Vec<String> = files
        .keys()
        .map(|k| k.split('/').next().unwrap_or(k).to_string())
        .collect();
    tops.dedup();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            if name != "..data" && name != stamp {
                let _ = std::fs::remove_dir_all(e.path());
            }
        } else if !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(true)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether a volume's root is already the pod's `fsGroup`'s: group-owned by it, setgid, and
/// group-readable (and writable unless read-only). What `fsGroupChangePolicy: OnRootMismatch`
/// looks at; the agent looks at it before every change, so a volume is walked once per pod and
/// again only when something else changed its root (a new `..data` of a configMap volume, a claim
/// another pod owned).
pub fn owned_by(dir: &Path, gid: u32, read_only: bool) -> bool {
    use std::os::unix::fs::MetadataExt;
    let need = if read_only { 0o2550 } else { 0o2770 };
    std::fs::metadata(dir).is_ok_and(|m| m.gid() == gid && m.mode() & need == need)
}

/// Gives a volume to the pod's `fsGroup`, as the kubelet's `SetVolumeOwnership` does: every file
/// and directory group-owned by it and group-readable (and group-writable unless the volume is
/// read-only), directories also group-searchable and setgid, so that what containers create in
/// them belongs to the group too. Symbolic links are re-owned, never followed.
pub fn set_ownership(dir: &Path, gid: u32, read_only: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mask = if read_only { 0o440 } else { 0o660 };
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        // The root itself may be a claim's link to its volume: that one is followed.
        let meta = if path == dir {
            std::fs::metadata(&path)
        } else {
            std::fs::symlink_metadata(&path)
        }
        .with_context(|| format!("reading {}", path.display()))?;
        let target = if path == dir {
            std::fs::canonicalize(&path)?
        } else {
            path.clone()
        };
        std::os::unix::fs::lchown(&target, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mut mode = meta.permissions().mode() & 0o7777 | mask;
        if meta.is_dir() {
            mode |= 0o2110;
            pending.extend(std::fs::read_dir(&target)?.flatten().map(|e| e.path()));
        }
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Prepares an emptyDir; memory-backed ones are a tmpfs (sized by `sizeLimit`). A new one is
/// world-writable, as upstream makes it; an existing one is left as it is.
pub fn empty_dir(dir: &Path, volume: &Value) -> anyhow::Result<()> {
    let new = !dir.exists();
    std::fs::create_dir_all(dir)?;
    if volume["emptyDir"]["medium"].as_str() == Some("Memory") && !skiff_common::fs::is_mountpoint(dir) {
        let mut opts = "mode=1777".to_string();
        if let Some(b) = volume["emptyDir"]["sizeLimit"]
            .as_str()
            .and_then(super::spec::bytes)
        {
            opts.push_str(&format!(",size={b}"));
        }
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .context("mounting a memory emptyDir")?;
    } else if new {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
    }
    Ok(())
}

/// Prepares a hostPath volume per its `type`.
pub fn host_path(volume: &Value) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(volume["hostPath"]["path"].as_str().unwrap_or_default());
    let kind = volume["hostPath"]["type"].as_str().unwrap_or("");
    match kind {
        "DirectoryOrCreate" => std::fs::create_dir_all(&path)?,
        "FileOrCreate" => {
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
        }
        "Directory" if !path.is_dir() => bail!(MountError(format!(
            "hostPath type check failed: {} is not a directory",
            path.display()
        ))),
        "File" if !path.is_file() => bail!(MountError(format!(
            "hostPath type check failed: {} is not a file",
            path.display()
        ))),
        "Socket" | "CharDevice" | "BlockDevice" if !path.exists() => {
            bail!(MountError(format!(
                "hostPath type check failed: {} does not exist",
                path.display()
            )))
        }
        _ => {}
    }
    Ok(path)
}

/// The host directory behind a bound claim: its volume's `hostPath` (created when its type says
/// so) or `local` path, and whether the pod's `fsGroup` owns it (`local` volumes and the ones
/// provisioned for claims; not a `hostPath` an operator named, as upstream). Unbound claims and
/// other volume sources are mount errors, retried.
pub async fn claim_path(lookup: &Lookup<'_>, claim: &str) -> anyhow::Result<(PathBuf, bool)> {
    let Some(pvc) = lookup.claim(claim).await? else {
        bail!(MountError(format!("persistentvolumeclaim \"{claim}\" not found")));
    };
    let volume = pvc["spec"]["volumeName"].as_str().unwrap_or_default();
    if volume.is_empty() || pvc["status"]["phase"] != "Bound" {
        bail!(MountError(format!(
            "persistentvolumeclaim \"{claim}\" is not bound yet"
        )));
    }
    let Some(pv) = lookup.volume(volume).await? else {
        bail!(MountError(format!("persistentvolume \"{volume}\" not found")));
    };
    let spec = &pv["spec"];
    if spec.get("hostPath").is_some() {
        let provisioned = pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"].is_string();
        return Ok((host_path(spec)?, provisioned));
    }
    if let Some(path) = spec["local"]["path"].as_str() {
        let path = PathBuf::from(path);
        if !path.exists() {
            bail!(MountError(format!(
                "local volume {volume}: {} does not exist",
                path.display()
            )));
        }
        return Ok((path, true));
    }
    bail!(MountError(format!(
        "persistentvolume \"{volume}\": only hostPath and local volumes are supported"
    )))
}

/// Makes the pod's volume directory for a claim a symlink to the volume's host path, so mounts
/// (and an agent restart) find it where every other volume lives.
pub fn link_claim(dir: &Path, target: &Path) -> anyhow::Result<()> {
    if std::fs::read_link(dir).is_ok_and(|t| t == target) {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(dir)?,
        Ok(_) => std::fs::remove_file(dir)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn mode_gid(p: &Path) -> (u32, u32) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.mode() & 0o7777, m.gid())
    }

    #[test]
    fn fs_group_owns_volumes_as_the_kubelet_sets_their_ownership() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: giving files to a group needs root");
            return;
        }
        let gid = 4321;
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("scratch");
        empty_dir(&empty, &serde_json::json!({"emptyDir": {}})).unwrap();
        std::fs::create_dir(empty.join("sub")).unwrap();
        std::fs::write(empty.join("sub/f"), "x").unwrap();
        std::fs::set_permissions(empty.join("sub/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!owned_by(&empty, gid, false));
        set_ownership(&empty, gid, false).unwrap();
        assert!(owned_by(&empty, gid, false));
        assert_eq!(mode_gid(&empty), (0o2777, gid));
        assert_eq!(mode_gid(&empty.join("sub")), (0o2775, gid));
        assert_eq!(mode_gid(&empty.join("sub/f")), (0o660, gid));
        // A later pass leaves a prepared emptyDir alone (no reset to 0777).
        empty_dir(&empty, &serde_json::json!({"emptyDir": {}})).unwrap();
        assert_eq!(mode_gid(&empty), (0o2777, gid));

        // File volumes: written owned and group-readable, and not rewritten on the next pass.
        let files: Files = [("key".to_string(), (b"v".to_vec(), 0o400, None))].into();
        let cm = dir.path().join("config");
        assert!(write_files(&cm, &files, Some(gid)).unwrap());
        assert_eq!(mode_gid(&cm.join("..data/key")), (0o440, gid));
        assert_eq!(mode_gid(&cm.join("key")).1, gid, "the link too");
        assert!(owned_by(&cm, gid, true));
        assert!(!write_files(&cm, &files, Some(gid)).unwrap(), "unchanged");
        // Without fsGroup the mode is the one asked for.
        let plain = dir.path().join("plain");
        write_files(&plain, &files, None).unwrap();
        assert_eq!(mode_gid(&plain.join("..data/key")), (0o400, 0));
    }
}
