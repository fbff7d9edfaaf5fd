//! The `docker` CLI, driven from the container tests: is a daemon there, build the CPU image
//! once per test process, and containers and networks that are removed when the test ends
//! (also when it fails).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The base image `deploy/Dockerfile.*` name by default (made by `deploy/base-image.sh`).
pub const BASE_IMAGE: &str = "lumen-base:bookworm";
/// Tag of the CPU image these tests build from the repository's Dockerfile.
pub const CPU_IMAGE: &str = "lumen-cpu:test";
/// Label on everything the tests create, so leftovers of a killed run can be found.
pub const LABEL: &str = "lumen.test=containers";

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("the docker CLI runs")
}

/// Runs docker and returns its stdout; panics with its stderr when it fails.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The daemon's version, or None when no daemon answers.
pub fn daemon_version() -> Option<String> {
    let out = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// True when the test may go on. Without a daemon it prints why it skips, except under CI
/// (`CI` set), where `.ci/run` starts a daemon, so a missing one is a failure.
pub fn available(test: &str) -> bool {
    if daemon_version().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: no Docker daemon answers, and CI must run the container tests (.ci/run starts dockerd)"
    );
    println!("SKIPPED {test}: no Docker daemon answers (start dockerd as root; .ci/run does)");
    false
}

/// The CPU image, built once per test process from `deploy/Dockerfile.cpu` with the lumen
/// binary cargo built for these tests (the build argument LUMEN_BINARY), on the base image
/// from `deploy/base-image.sh` (run here when the base is missing: debootstrap, as root).
pub fn cpu_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        ensure_base_image();
        let staged = stage_binary();
        let rel = staged.strip_prefix(repo()).expect("staged inside the repository").to_str().unwrap().to_string();
        let start = std::time::Instant::now();
        docker_ok(&[
            "build",
            "-q",
            "-f",
            "deploy/Dockerfile.cpu",
            "-t",
            CPU_IMAGE,
            "--label",
            LABEL,
            "--build-arg",
            &format!("BUILD_IMAGE={BASE_IMAGE}"),
            "--build-arg",
            &format!("LUMEN_BINARY={rel}"),
            repo().to_str().unwrap(),
        ]);
        let size = docker_ok(&["image", "inspect", "-f", "{{.Size}}", CPU_IMAGE]);
        let mb = size.trim().parse::<u64>().unwrap_or(0) as f64 / 1e6;
        println!("built {CPU_IMAGE} in {:.1} s: {mb:.0} MB", start.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&staged);
        // The image a rebuild replaced, if any: untagged, with this label.
        let _ = docker(&["image", "prune", "-f", "--filter", &format!("label={LABEL}")]);
    });
    CPU_IMAGE
}

fn ensure_base_image() {
    if docker(&["image", "inspect", BASE_IMAGE]).status.success() {
        return;
    }
    let out = Command::new("bash").arg(repo().join("deploy/base-image.sh")).output().expect("bash runs");
    assert!(
        out.status.success(),
        "deploy/base-image.sh failed (it needs root and debootstrap):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies the test's lumen binary to `.cache/prebuilt/` (inside the build context, let in by
/// .dockerignore), wherever cargo's target folder is.
fn stage_binary() -> PathBuf {
    let dir = repo().join(".cache/prebuilt");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("lumen-{}", std::process::id()));
    std::fs::copy(env!("CARGO_BIN_EXE_lumen"), &path).expect("copy the lumen binary into the build context");
    path
}

/// Containers and networks of one test, removed on drop.
pub struct Scope {
    pub prefix: String,
    containers: Vec<String>,
    networks: Vec<String>,
}

impl Scope {
    pub fn new(test: &str) -> Self {
        Self { prefix: format!("lumen-{test}-{}", std::process::id()), containers: vec![], networks: vec![] }
    }

    /// A network with no way out of this machine (`--internal`): the containers reach one
    /// another by name and nothing else.
    pub fn network(&mut self) -> String {
        let name = format!("{}-net", self.prefix);
        docker_ok(&["network", "create", "--internal", "--label", LABEL, &name]);
        self.networks.push(name.clone());
        name
    }

    /// `docker create` a container named PREFIX-NAME with `args` (options, image, command);
    /// returns its name. Start it with [`start`].
    pub fn create(&mut self, name: &str, args: &[String]) -> String {
        let full = format!("{}-{name}", self.prefix);
        let mut all: Vec<String> =
            ["create", "--name", &full, "--label", LABEL].iter().map(|s| s.to_string()).collect();
        all.extend_from_slice(args);
        docker_ok(&all.iter().map(String::as_str).collect::<Vec<_>>());
        self.containers.push(full.clone());
        full
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
    }
}

pub fn start(container: &str) {
    docker_ok(&["start", container]);
}

/// Waits for the container to stop; its exit code.
pub fn wait(container: &str) -> i32 {
    docker_ok(&["wait", container]).trim().parse().expect("docker wait prints the exit code")
}

/// The container's stdout and stderr, apart.
pub fn logs(container: &str) -> (String, String) {
    let out = docker(&["logs", container]);
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
