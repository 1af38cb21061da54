//! Lays out the release binary so that the code a running node executes sits together.
//!
//! The kernel maps a program's code in 64 KiB windows around each page it first touches
//! (fault-around), so code scattered over the binary makes the resident size grow with the
//! binary rather than with what runs: a node touched 105 windows (6.7 MB) of 12 MB of code.
//! `scripts/symbol-order.txt` lists the functions a node ran under callgrind (start-up, a
//! handshake, requests, bulk, idle; `scripts/symbol-order.sh` writes it), and the linker puts them
//! first. A function missing from the list (renamed, new) is laid out as before, so a stale list
//! costs resident size, never correctness. The names carry hashes of the crates' versions and
//! features: the list matches what `cargo build --release` makes (a `cargo test` build unifies the
//! dev-dependencies' features and gets other names, so its binary is mostly not laid out).
//!
//! Only where the link surely goes through lld, which reads such a list: rustc 1.90 and newer
//! link x86_64-unknown-linux-gnu with its own lld, unless a linker or link flags are configured.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=scripts/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        // -C linker=, link-self-contained, linker-features, link-arg(s): the link is the user's.
        || env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"))
        || !rustc_links_with_lld()
    {
        return;
    }
    let Ok(dir) = env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = Path::new(&dir).join("scripts/symbol-order.txt");
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether the compiler is rustc 1.90 or newer ("rustc 1.95.0 (59807616e 2026-04-14)").
fn rustc_links_with_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let mut parts = version
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(Some(major)), Some(Some(minor))) if (major, minor) >= (1, 90))
}
