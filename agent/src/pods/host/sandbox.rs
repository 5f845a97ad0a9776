//! A pod's sandbox: its network namespace and address, the files every container mounts
//! (hosts, resolv.conf, hostname), its volumes, and tearing all of it down.

use anyhow::{Context, bail};

use super::*;
use crate::pods::{spec, volumes};

impl Host {
    pub(super) async fn make_sandbox(&self, pod: &Value) -> anyhow::Result<Option<String>> {
        std::fs::create_dir_all(self.sandbox())?;
        let hostname = crate::pods::spec::pod_hostname(pod);
        let mut cmd = crate::runtime::helper::command("sandbox");
        cmd.arg("--dir")
            .arg(self.sandbox())
            .arg("--hostname")
            .arg(&hostname);
        if let Some(ns) = crate::network::pod_net::node_netns() {
            cmd.arg("--node-netns").arg(ns);
        }
        if own_users(pod) {
            static ALLOCATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one_at_a_time = ALLOCATING.lock().unwrap_or_else(|p| p.into_inner());
            let pods = self.dir.parent().context("the pods directory")?;
            let base = crate::runtime::userns::allocate(pods, &self.dir)?;
            cmd.arg("--userns-base").arg(base.to_string());
        }
        let mut own_ip = None;
        if host_network(pod) {
            cmd.arg("--host-network");
        } else {
            let ip = self.shared.ipam.allocate(&self.uid)?;
            std::fs::write(self.dir.join("ip"), ip.to_string())?;
            own_ip = Some(ip.to_string());
            cmd.arg("--bridge")
                .arg(&self.shared.cfg.bridge)
                .arg("--veth")
                .arg(crate::network::pod_net::veth_name("sk", &self.uid))
                .arg("--ip")
                .arg(ip.to_string())
                .arg("--prefix")
                .arg(self.shared.ipam.prefix().to_string())
                .arg("--gateway")
                .arg(self.shared.ipam.gateway().to_string());
            if let Some(cidr) = &self.shared.cfg.service_cidr {
                cmd.arg("--service-cidr").arg(cidr);
            }
        }
        let out = cmd.output().await.context("running the sandbox helper")?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            self.event(
                "Warning",
                "FailedCreatePodSandBox",
                &format!("Failed to create pod sandbox: {msg}"),
            )
            .await;
            bail!("creating the pod sandbox: {msg}");
        }
        let ip = own_ip.clone().unwrap_or_else(|| self.shared.cfg.node_ip.clone());
        self.write_pod_files(pod, &hostname, &ip)?;
        Ok(own_ip)
    }

    fn write_pod_files(&self, pod: &Value, hostname: &str, ip: &str) -> anyhow::Result<()> {
        let host_network = host_network(pod);
        // A host-network pod sees the node's hosts file (with its aliases after it), as the
        // kubelet writes it; other pods get one that names the pod.
        let mut hosts = if host_network {
            let node = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            let mut hosts = format!("# Kubernetes-managed hosts file (host network).\n{node}");
            if !hosts.ends_with('\n') {
                hosts.push('\n');
            }
            hosts
        } else {
            let mut hosts = String::from(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            );
            let fqdn = match pod["spec"]["subdomain"].as_str() {
                Some(sub) => format!(
                    "{hostname}.{sub}.{}.svc.cluster.local\t{hostname}",
                    self.namespace
                ),
                None => hostname.to_string(),
            };
            hosts.push_str(&format!("{ip}\t{fqdn}\n"));
            hosts
        };
        for alias in pod["spec"]["hostAliases"].as_array().into_iter().flatten() {
            let names: Vec<&str> = alias["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            hosts.push_str(&format!(
                "{}\t{}\n",
                alias["ip"].as_str().unwrap_or_default(),
                names.join("\t")
            ));
        }
        std::fs::write(self.dir.join("hosts"), hosts)?;
        std::fs::write(self.dir.join("hostname"), format!("{hostname}\n"))?;
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv = spec::resolv_conf(
            pod,
            host_network,
            self.shared
                .cfg
                .dns
                .as_ref()
                .map(|d| (d.address, d.domain.as_str())),
            &host,
        );
        std::fs::write(self.dir.join("resolv.conf"), resolv)?;
        Ok(())
    }

    pub(super) async fn make_volumes(&self, pod: &Value) -> anyhow::Result<()> {
        let lookup = self.lookup();
        // In a user namespace the group is the host's ID of the pod's `fsGroup`.
        let fs_group = pod["spec"]["securityContext"]["fsGroup"]
            .as_u64()
            .and_then(|g| u32::try_from(g).ok())
            .map(|g| crate::runtime::userns::base_of(&self.dir).map_or(g, |base| base + g));
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default();
            let dir = self.dir.join("volumes").join(name);
            let owned = if v.get("emptyDir").is_some() {
                volumes::empty_dir(&dir, v)?;
                true
            } else if v.get("hostPath").is_some() {
                volumes::host_path(v)?;
                false
            } else if let Some(mut files) = volumes::desired_files(&lookup, pod, v).await? {
                // In a user namespace a file's owner is the host's ID of the pod's user.
                if let Some(base) = crate::runtime::userns::base_of(&self.dir) {
                    for owner in files.values_mut().filter_map(|f| f.2.as_mut()) {
                        *owner += base;
                    }
                }
                volumes::write_files(&dir, &files, fs_group)?;
                false
            } else if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                let (path, owned) = volumes::claim_path(&lookup, claim).await?;
                volumes::link_claim(&dir, &path)?;
                owned
            } else {
                false
            };
            // The pod's fsGroup owns what its emptyDirs and claims hold (not a host path).
            if let Some(gid) = fs_group.filter(|_| owned) {
                let (_, read_only) = self.volume_source(pod, name)?;
                if !volumes::owned_by(&dir, gid, read_only) {
                    volumes::set_ownership(&dir, gid, read_only)?;
                }
            }
        }
        Ok(())
    }

    /// Host path behind a volume mount.
    pub(super) fn volume_source(&self, pod: &Value, volume_name: &str) -> anyhow::Result<(PathBuf, bool)> {
        let v = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"].as_str() == Some(volume_name))
            .with_context(|| format!("volume {volume_name:?} is not defined"))?;
        if v.get("hostPath").is_some() {
            return Ok((
                PathBuf::from(v["hostPath"]["path"].as_str().unwrap_or_default()),
                false,
            ));
        }
        let read_only = ["configMap", "secret", "downwardAPI", "projected"]
            .iter()
            .any(|k| v.get(*k).is_some())
            || v["persistentVolumeClaim"]["readOnly"] == true;
        Ok((self.dir.join("volumes").join(volume_name), read_only))
    }

    pub(super) async fn remove(&self, pod: &Value) -> anyhow::Result<()> {
        // Container roots and memory volumes.
        if let Ok(rd) = std::fs::read_dir(self.dir.join("containers")) {
            for c in rd.flatten() {
                for a in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                    let rootfs = a.path().join("bundle/rootfs");
                    if skiff_common::fs::is_mountpoint(&rootfs) {
                        nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
                            .context("unmounting a container root")?;
                    }
                }
            }
        }
        // Memory volumes, and the idmapped views of image layers of a pod in a user namespace.
        for sub in ["volumes", "layers"] {
            for v in std::fs::read_dir(self.dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                if skiff_common::fs::is_mountpoint(&v.path()) {
                    nix::mount::umount2(&v.path(), nix::mount::MntFlags::MNT_DETACH)?;
                }
            }
        }
        crate::network::pod_net::release_sandbox(&self.sandbox())?;
        if !host_network(pod) {
            let h = crate::network::pod_net::connect()?;
            crate::network::pod_net::delete_link(&h, &crate::network::pod_net::veth_name("sk", &self.uid))
                .await?;
            self.shared.ipam.release(&self.uid)?;
        }
        crate::runtime::cgroups::remove_tree(&self.cgroup_parent());
        // Never through a mount: an image layer's files are every pod's.
        let under = format!("{}/", self.dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if let Some(m) = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .find(|m| m.starts_with(&under))
        {
            bail!("{m} is still mounted; the pod's directory is kept");
        }
        std::fs::remove_dir_all(&self.dir).or_else(ignore_missing)?;
        std::fs::remove_dir_all(self.shared.log_dir(&self.namespace, &self.name, &self.uid))
            .or_else(ignore_missing)?;
        Ok(())
    }
}
