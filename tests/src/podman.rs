//! A real container runtime driving the CNI plugin: podman (Debian's 4.3,
//! libcni 1.1) with its CNI backend, inside a node's network namespace, on a
//! conflist directory the test chooses. Everything podman keeps (storage,
//! run state, the libcni cache, its configuration) lives under the test's
//! own directory; every call runs in one private mount namespace of the
//! test's, in which /var/lib is that directory and, on hybrid cgroup hosts,
//! the cgroup2 mount is hidden (crun refuses hybrid layouts; containers run
//! without cgroups of their own). Nothing is written to the root network
//! namespace: the plugins run, and create their links, in the node's
//! namespace.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use anyhow::{Context, Result, bail};

use sluice_testkit::{
    bpffs,
    cleanup::{self, Item},
    netns::command_entering,
};

pub struct Podman {
    dir: PathBuf,
    netns: PathBuf,
    mount_ns: PathBuf,
}

/// The busybox image every container runs.
pub const IMAGE: &str = "localhost/sluice-test-busybox:latest";

impl Podman {
    /// A podman whose networks are the conflists in `conf_dir` and whose
    /// plugins are in `plugin_dirs`, running in the network namespace at
    /// `netns`, keeping its state under `dir`.
    pub fn new(dir: &Path, netns: &Path, conf_dir: &Path, plugin_dirs: &[&Path]) -> Result<Self> {
        for sub in [
            "conf", "storage", "runroot", "tmp", "logs", "varlib", "rootfs",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let e = dir.display();
        let plugins: Vec<String> = plugin_dirs
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        let containers_conf = format!(
            r#"[containers]
cgroups = "disabled"
log_driver = "k8s-file"
default_sysctls = []
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "cni"
cni_plugin_dirs = [{plugins}]
network_config_dir = "{conf}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{e}/logs/events.log"
tmp_dir = "{e}/tmp"
volume_path = "{e}/storage/volumes"
image_copy_tmp_dir = "{e}/tmp"
lock_type = "file"
runtime = "crun"
"#,
            plugins = plugins.join(", "),
            conf = conf_dir.display(),
        );
        std::fs::write(dir.join("conf/containers.conf"), containers_conf)?;
        std::fs::write(
            dir.join("conf/storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{e}/storage\"\nrunroot = \"{e}/runroot\"\n"
            ),
        )?;
        std::fs::write(dir.join("conf/registries.conf"), "")?;
        let mount_ns = private_mount_namespace(dir)?;
        let p = Self {
            dir: dir.to_owned(),
            netns: netns.to_owned(),
            mount_ns,
        };
        p.import_busybox()?;
        Ok(p)
    }

    /// Runs `podman ARGS`; returns its output whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        let e = &self.dir;
        command_entering(&self.netns, "nsenter")?
            .arg(format!("--mount={}", self.mount_ns.display()))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", e.join("conf/containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", e.join("conf/storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", e.join("conf/registries.conf"))
            .env("TMPDIR", e.join("tmp"))
            .output()
            .context("running podman (installed by `cargo xtask setup`)")
    }

    /// Runs `podman ARGS` and returns stdout; fails with stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "podman {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Builds the test image from the host's static busybox: no registry.
    fn import_busybox(&self) -> Result<()> {
        let root = self.dir.join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "www"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .context("copying /bin/busybox (Debian's busybox-static)")?;
        std::fs::write(
            root.join("www/index.html"),
            "served by a podman container\n",
        )?;
        for applet in ["sh", "httpd", "nc", "ip", "cat", "sleep", "printf"] {
            let link = root.join("bin").join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link)?;
            }
        }
        let tar = self.dir.join("rootfs.tar");
        let status = std::process::Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()?;
        if !status.success() {
            bail!("tar of the test image failed");
        }
        self.run(&[
            "import",
            "--change",
            "CMD [\"/bin/sh\"]",
            &tar.display().to_string(),
            IMAGE,
        ])?;
        Ok(())
    }
}

/// Makes the mount namespace every podman call enters, bound to a file in
/// `dir` (itself made a private mount, so the binding works wherever the
/// host's mounts propagate): everything private, /var/lib replaced by
/// `dir/varlib`, the hybrid layout's cgroup2 mount hidden.
fn private_mount_namespace(dir: &Path) -> Result<PathBuf> {
    let sh = |script: &str| -> Result<()> {
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .output()?;
        if !out.status.success() {
            bail!("{script}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    let d = dir.display();
    sh(&format!("mount --bind {d} {d} && mount --make-private {d}"))?;
    cleanup::register(Item::Mount(dir.to_owned()));
    let ns = dir.join("mnt.ns");
    std::fs::write(&ns, "")?;
    sh(&format!(
        "unshare --mount={ns} --propagation private sh -c '\
         if grep -q \" /sys/fs/cgroup/unified cgroup2 \" /proc/self/mounts; then umount /sys/fs/cgroup/unified; fi; \
         mount --bind {d}/varlib /var/lib'",
        ns = ns.display()
    ))?;
    cleanup::register(Item::Mount(ns.clone()));
    Ok(ns)
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Stops every container (their DEL runs now), then lets the mount
        // namespace go.
        let _ = self.output(&["rm", "-a", "-f", "-t", "0"]);
        bpffs::unmount(&self.mount_ns);
        bpffs::unmount(&self.dir);
        cleanup::unregister(&Item::Mount(self.mount_ns.clone()));
        cleanup::unregister(&Item::Mount(self.dir.clone()));
    }
}
