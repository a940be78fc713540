//! Links the release binary's functions in a measured order.
//!
//! The kernel maps a binary's code in 64 KiB windows around each page first touched (fault-
//! around), so what is resident at start is not the code that runs but every window that holds
//! some of it: the ~900 functions a start and a request run are spread over nearly all of the
//! 7 MiB of code, and 3.6 MiB of it was resident in an idle legate. `link/symbol-order-<target>.txt`
//! (made by `scripts/link-order`, which records the functions a start, requests and a stop run)
//! asks lld to put those functions first and together; see docs/performance.md.
//!
//! Only for release builds of the `legate` binary, only with lld (the Rust toolchain's own,
//! through its `gcc-ld` wrapper: the default linker of the glibc target, and chosen here for the
//! musl one too). Symbols the list names that a build no longer has are skipped: after code
//! changes the order degrades, it never breaks the link. `LEGATE_LINK_ORDER=off` turns it off.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link");
    println!("cargo:rerun-if-env-changed=LEGATE_LINK_ORDER");
    if env::var("LEGATE_LINK_ORDER").is_ok_and(|v| v == "off") {
        return;
    }
    if env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    let target = env::var("TARGET").unwrap_or_default();
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let order = manifest
        .join("link")
        .join(format!("symbol-order-{target}.txt"));
    if !order.is_file() {
        return;
    }
    let Some(gcc_ld) = toolchain_lld() else {
        println!(
            "cargo:warning=no rust-lld in the toolchain: linking without {}",
            order.display()
        );
        return;
    };
    println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
    println!("cargo:rustc-link-arg-bins=-B{}", gcc_ld.display());
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// The toolchain's `gcc-ld` directory, whose `ld.lld` runs rust-lld when `cc` is told
/// `-fuse-ld=lld -B<dir>` (what rustc itself does for the glibc target).
fn toolchain_lld() -> Option<PathBuf> {
    let rustc = env::var_os("RUSTC")?;
    let host = env::var("HOST").ok()?;
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(out.stdout).ok()?;
    let dir = PathBuf::from(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/gcc-ld");
    dir.join("ld.lld").is_file().then_some(dir)
}
