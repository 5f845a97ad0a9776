//! The node's image store: content-addressed blobs, layers unpacked once (overlayfs lower directories
//! shared by every container that uses them), and names pointing at manifests.
//!
//! Layout under `DIR/images`:
//! - `blobs/sha256/<hex>`: manifests and configs, verified against their digest;
//! - `layers/<diffID hex>/`: one unpacked layer, whiteouts in overlayfs form;
//! - `images/<manifest hex>.json`: what a container needs (config, ordered layer diffIDs);
//! - `names.json`: image names (`registry/repo:tag`, `registry/repo@digest`) to manifest digests.
//!
//! Writers (the agent, `skiff-agent image import`) take `lock` so both may run at once.

pub mod import;
pub mod pull;
pub mod reference;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use reference::Reference;

/// A stored image, ready to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The manifest's digest (what `imageID` reports).
    pub digest: String,
    /// The image config's digest.
    pub config_digest: String,
    /// Layer diffIDs, bottom first.
    pub layers: Vec<String>,
    /// The image config (`config` section of the OCI image config).
    pub config: Value,
    /// Bytes the unpacked layers take (approximate).
    #[serde(default)]
    pub size: u64,
}

/// The store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// A held store lock (released on drop).
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] nix::fcntl::Flock<File>);

/// SHA-256 of some bytes as `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex part of a `sha256:` digest, checked.
pub fn digest_hex(digest: &str) -> anyhow::Result<&str> {
    let h = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("unsupported digest {digest:?}"))?;
    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("malformed digest {digest:?}");
    }
    Ok(h)
}

/// A reader that hashes what passes through it.
pub struct Hashing<R> {
    inner: R,
    ctx: ring::digest::Context,
    /// Bytes read so far.
    pub count: u64,
}

impl<R> std::fmt::Debug for Hashing<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hashing")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Hashing<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            count: 0,
        }
    }
    /// `sha256:<hex>` of everything read.
    pub fn finish(self) -> String {
        format!("sha256:{}", hex(self.ctx.finish().as_ref()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl ImageStore {
    /// Opens (creating) the store under `data_dir/images`.
    pub fn open(data_dir: &Path) -> anyhow::Result<ImageStore> {
        let root = data_dir.join("images");
        for sub in ["blobs/sha256", "layers", "images", "tmp"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        Ok(ImageStore { root })
    }

    /// Takes the writers' lock.
    pub fn lock(&self) -> anyhow::Result<Lock> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))?;
        let l = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e)?;
        Ok(Lock(l))
    }

    /// A fresh scratch directory on the same filesystem.
    pub fn scratch(&self) -> anyhow::Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix("in-")
            .tempdir_in(self.root.join("tmp"))?)
    }

    /// Path of a blob.
    pub fn blob_path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// Stores bytes under their digest, which must be `expected` when given.
    pub fn put_blob(&self, bytes: &[u8], expected: Option<&str>) -> anyhow::Result<String> {
        let digest = digest_of(bytes);
        if let Some(e) = expected
            && e != digest
        {
            bail!("digest mismatch: expected {e}, content has {digest}");
        }
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
            tmp.write_all(bytes)?;
            tmp.persist(&path)?;
        }
        Ok(digest)
    }

    /// The unpacked directory of a layer.
    pub fn layer_dir(&self, diff_id: &str) -> anyhow::Result<PathBuf> {
        Ok(self.root.join("layers").join(digest_hex(diff_id)?))
    }

    /// Whether a layer is unpacked already.
    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_dir(diff_id).map(|d| d.exists()).unwrap_or(false)
    }

    /// Unpacks a (possibly gzip-compressed) layer tarball, checking the uncompressed content against
    /// `diff_id`. Overlay lower directories are shared, so a layer is unpacked once per node.
    pub fn unpack_layer(&self, tarball: &Path, diff_id: &str) -> anyhow::Result<u64> {
        let dest = self.layer_dir(diff_id)?;
        if dest.exists() {
            return Ok(0);
        }
        let reader = open_tarball(tarball)?;
        let scratch = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.root.join("tmp"))?;
        let mut hashing = Hashing::new(reader);
        let size = unpack_tar(&mut hashing, scratch.path())?;
        // Whatever follows the tar end marker counts towards the digest too.
        std::io::copy(&mut hashing, &mut std::io::sink())?;
        let got = hashing.finish();
        if got != diff_id {
            bail!("layer content does not match its diffID: expected {diff_id}, got {got}");
        }
        let dir = scratch.keep();
        std::fs::rename(&dir, &dest).or_else(|e| {
            if dest.exists() {
                std::fs::remove_dir_all(&dir)
            } else {
                Err(e)
            }
        })?;
        Ok(size)
    }

    /// Records an image and points `names` at it.
    pub fn add_image(&self, image: &Image, names: &[String]) -> anyhow::Result<()> {
        let hexd = digest_hex(&image.digest)?;
        let path = self.root.join("images").join(format!("{hexd}.json"));
        skiff_common::fs::write_private(&path, &serde_json::to_vec_pretty(image)?)?;
        let mut all = self.names()?;
        for n in names {
            all.insert(n.clone(), image.digest.clone());
        }
        all.insert(format!("@{}", image.digest), image.digest.clone());
        skiff_common::fs::write_private(&self.root.join("names.json"), serde_json::to_vec_pretty(&all)?)?;
        Ok(())
    }

    /// Every name the store knows, to the manifest digest it names.
    pub fn names(&self) -> anyhow::Result<BTreeMap<String, String>> {
        match std::fs::read(self.root.join("names.json")) {
            Ok(b) => Ok(serde_json::from_slice(&b).context("names.json is corrupt")?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The image a reference names, if present locally.
    pub fn resolve(&self, reference: &Reference) -> anyhow::Result<Option<Image>> {
        let names = self.names()?;
        let digest = match &reference.digest {
            Some(d) => Some(d.clone()),
            None => names.get(&reference.to_string()).cloned(),
        };
        let Some(digest) = digest else { return Ok(None) };
        self.image(&digest)
    }

    /// The image with this manifest digest.
    pub fn image(&self, digest: &str) -> anyhow::Result<Option<Image>> {
        let path = self
            .root
            .join("images")
            .join(format!("{}.json", digest_hex(digest)?));
        match std::fs::read(&path) {
            Ok(b) => {
                let image: Image = serde_json::from_slice(&b)?;
                Ok(image.layers.iter().all(|l| self.has_layer(l)).then_some(image))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every stored image.
    pub fn images(&self) -> anyhow::Result<Vec<Image>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.root.join("images"))? {
            let b = std::fs::read(e?.path())?;
            if let Ok(i) = serde_json::from_slice::<Image>(&b) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// `status.images` for the Node: each stored image's names and size, largest first, at most
    /// 50 (the kubelet's default `nodeStatusMaxImages`). The scheduler's image locality score
    /// reads it.
    pub fn node_images(&self) -> anyhow::Result<Value> {
        let names = self.names()?;
        let mut images: Vec<(u64, Vec<String>)> = self
            .images()?
            .into_iter()
            .map(|i| {
                let mut n: Vec<String> = names
                    .iter()
                    .filter(|(_, d)| **d == i.digest)
                    .map(|(name, _)| name.clone())
                    .collect();
                n.sort();
                (i.size, n)
            })
            .filter(|(_, n)| !n.is_empty())
            .collect();
        images.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        images.truncate(50);
        Ok(Value::Array(
            images
                .into_iter()
                .map(|(size, names)| serde_json::json!({"names": names, "sizeBytes": size}))
                .collect(),
        ))
    }

    /// Removes images not in `keep` (manifest digests) and layers no remaining image uses.
    /// Returns the manifests removed.
    pub fn collect_garbage(&self, keep: &BTreeSet<String>) -> anyhow::Result<Vec<String>> {
        let _lock = self.lock()?;
        let mut removed = Vec::new();
        let mut live_layers = BTreeSet::new();
        let mut live_blobs = BTreeSet::new();
        for image in self.images()? {
            if keep.contains(&image.digest) {
                live_layers.extend(
                    image
                        .layers
                        .iter()
                        .filter_map(|l| digest_hex(l).ok().map(str::to_string)),
                );
                live_blobs.insert(digest_hex(&image.digest)?.to_string());
                live_blobs.insert(digest_hex(&image.config_digest)?.to_string());
            } else {
                std::fs::remove_file(
                    self.root
                        .join("images")
                        .join(format!("{}.json", digest_hex(&image.digest)?)),
                )?;
                removed.push(image.digest);
            }
        }
        let mut names = self.names()?;
        names.retain(|_, d| keep.contains(d));
        skiff_common::fs::write_private(&self.root.join("names.json"), &serde_json::to_vec_pretty(&names)?)?;
        for e in std::fs::read_dir(self.root.join("layers"))? {
            let e = e?;
            if !live_layers.contains(e.file_name().to_string_lossy().as_ref()) {
                std::fs::remove_dir_all(e.path())?;
            }
        }
        for e in std::fs::read_dir(self.root.join("blobs/sha256"))? {
            let e = e?;
            if !live_blobs.contains(e.file_name().to_string_lossy().as_ref()) {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(removed)
    }
}

/// Opens a tar archive, decompressing it if it is gzip'd (zstd is refused with a clear error).
pub fn open_tarball(path: &Path) -> anyhow::Result<Box<dyn Read>> {
    let mut magic = [0u8; 4];
    let n = File::open(path)?.read(&mut magic)?;
    let file = std::io::BufReader::new(File::open(path)?);
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(file)))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        bail!("zstd-compressed archives are not supported yet")
    } else {
        Ok(Box::new(file))
    }
}

/// Unpacks a layer tar into `dest`, turning OCI whiteouts into overlayfs ones. Returns bytes written.
fn unpack_tar(reader: &mut dyn Read, dest: &Path) -> anyhow::Result<u64> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut size = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            bail!("layer entry {} escapes the layer", path.display());
        }
        if name == ".wh..wh..opq" {
            let dir = dest.join(&parent);
            std::fs::create_dir_all(&dir)?;
            xattr::set(&dir, "trusted.overlay.opaque", b"y")?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let dir = dest.join(&parent);
            std::fs::create_dir_all(&dir)?;
            let target = dir.join(hidden);
            let _ = std::fs::remove_file(&target);
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )?;
            continue;
        }
        size += entry.header().size().unwrap_or(0);
        entry
            .unpack_in(dest)
            .with_context(|| format!("unpacking {}", path.display()))?;
    }
    Ok(size)
}
