//! Stamps the binary with the git commit it was built from (`wxgate
//! --version`, `wxgate_build_info`). Outside a git checkout (a container
//! build context), `WXGATE_BUILD_COMMIT` can say it; else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=WXGATE_BUILD_COMMIT");
    let commit = std::env::var("WXGATE_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WXGATE_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself, and the branch it points to.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{reference}");
        }
        println!("cargo:rerun-if-changed={dir}/packed-refs");
    }
}
