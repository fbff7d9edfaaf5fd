//! The CUDA image's library list (`deploy/cuda-runtime-libs.txt`), checked three ways:
//!
//! - always: its form, and cuDNN's sub-libraries all there when cuDNN is (cuDNN 9 loads
//!   them by dlopen, which no `readelf` shows: a list that lacks one fails on the first
//!   convolution, on the GPU, in production);
//! - with a Docker daemon: every `system` library is in the runtime base image;
//! - with a CUDA build (`make cuda`: `target/cuda/release/lumen` and `.cuda/`, or
//!   `LUMEN_CUDA_BINARY` and `LUMEN_CUDA_DIR`): every `readelf -d` NEEDED entry of the binary
//!   is listed, and `deploy/cuda-libs.sh check` derives exactly the list from the binary and
//!   the wheels. CI has no CUDA build (40+ minutes on 2 cores), so there only the first two
//!   run; the CUDA image's build stage runs the third on every build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::docker::{self, repo, BASE_IMAGE};

const LIST: &str = "deploy/cuda-runtime-libs.txt";
const CUDNN_SUBLIBS: &[&str] = &[
    "libcudnn_graph.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_adv.so.9",
    "libcudnn_engines_precompiled.so.9",
    "libcudnn_engines_runtime_compiled.so.9",
    "libcudnn_heuristic.so.9",
];

/// name → kind (needed, loaded, driver, system).
fn read_list() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo().join(LIST)).unwrap();
    let mut list = BTreeMap::new();
    for line in text.lines().map(|l| l.split('#').next().unwrap().trim()).filter(|l| !l.is_empty()) {
        let (kind, name) = line.split_once(' ').unwrap_or_else(|| panic!("{LIST}: {line:?} is not KIND NAME"));
        assert!(["needed", "loaded", "driver", "system"].contains(&kind), "{LIST}: unknown kind in {line:?}");
        assert!(list.insert(name.to_string(), kind.to_string()).is_none(), "{LIST}: {name} listed twice");
    }
    list
}

pub fn check() {
    let list = read_list();
    let kind = |n: &str| list.get(n).map(String::as_str);
    assert_eq!(kind("libcuda.so.1"), Some("driver"), "the driver comes from the GPU host, never the image");
    if kind("libcudnn.so.9") == Some("needed") {
        let missing: Vec<_> = CUDNN_SUBLIBS.iter().filter(|l| kind(l) != Some("loaded")).collect();
        assert!(missing.is_empty(), "cuDNN loads these at run time; the image would lack them: {missing:?}");
        assert_eq!(kind("libnvrtc.so.13"), Some("loaded"), "cuDNN's runtime-compiled engines load NVRTC");
    }
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile.cuda")).unwrap();
    for step in ["cuda-libs.sh check", "cuda-libs.sh copy", "cuda-runtime-libs.txt"] {
        assert!(dockerfile.contains(step), "Dockerfile.cuda does not run {step}");
    }
    if docker::daemon_version().is_some() {
        check_system_libs_in_base(&list);
    } else {
        println!("cuda_runtime_libraries: no Docker daemon; the base image's system libraries were not checked");
    }
    match cuda_build() {
        Some((binary, site)) => check_against_binary(&list, &binary, &site),
        None => println!(
            "cuda_runtime_libraries: no CUDA build here (make cuda, or LUMEN_CUDA_BINARY and LUMEN_CUDA_DIR): \
             checked the list's form and the base image only"
        ),
    }
}

fn check_system_libs_in_base(list: &BTreeMap<String, String>) {
    let system: Vec<&str> = list.iter().filter(|(_, k)| *k == "system").map(|(n, _)| n.as_str()).collect();
    if !docker::docker(&["image", "inspect", BASE_IMAGE]).status.success() {
        docker::cpu_image(); // makes the base image on the way
    }
    let script = "for l in \"$@\"; do ldconfig -p | grep -q \"^\\s*$l \" || echo \"$l\"; done";
    let mut args = vec!["run", "--rm", "--network", "none", "--entrypoint", "sh", BASE_IMAGE, "-c", script, "sh"];
    args.extend(&system);
    let missing = docker::docker_ok(&args);
    assert!(missing.trim().is_empty(), "{BASE_IMAGE} lacks system libraries the CUDA libraries need: {missing}");
}

/// The CUDA binary and the wheels' `nvidia` folder, where a CUDA build exists.
fn cuda_build() -> Option<(PathBuf, PathBuf)> {
    let binary = std::env::var_os("LUMEN_CUDA_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/cuda/release/lumen"));
    let dir = std::env::var_os("LUMEN_CUDA_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join(".cuda"));
    let lib = dir.join("venv/lib");
    let site =
        std::fs::read_dir(&lib).ok()?.flatten().map(|e| e.path().join("site-packages/nvidia")).find(|p| p.is_dir())?;
    binary.is_file().then_some((binary, site))
}

fn check_against_binary(list: &BTreeMap<String, String>, binary: &Path, site: &Path) {
    let out = Command::new("readelf").arg("-d").arg(binary).output().expect("readelf runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.strip_suffix(']'))
        .collect();
    assert!(
        needed.contains(&"libcudnn.so.9") || needed.contains(&"libcublas.so.13"),
        "{} is not a CUDA build",
        binary.display()
    );
    let unlisted: Vec<_> = needed.iter().filter(|n| !list.contains_key(**n)).collect();
    assert!(unlisted.is_empty(), "{} needs libraries {LIST} lacks: {unlisted:?}", binary.display());
    let status = Command::new("bash")
        .arg(repo().join("deploy/cuda-libs.sh"))
        .arg("check")
        .arg(binary)
        .arg(repo().join(LIST))
        .arg(site.join("cu13/lib"))
        .arg(site.join("cudnn/lib"))
        .status()
        .expect("bash runs");
    assert!(status.success(), "deploy/cuda-libs.sh check failed (its diff is above)");
    println!("cuda_runtime_libraries: {LIST} matches {} ({} NEEDED entries)", binary.display(), needed.len());
}
