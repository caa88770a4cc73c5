//! Links the binaries with packed relative relocations (DT_RELR) on Linux. The `meridian`
//! binary carries about 30,000 relative relocations; as a RELA table they are 740 KB that the
//! dynamic loader reads at every start and that stay resident, as a RELR table 8 KB. This keeps
//! about 0.5 MiB off the resident memory of every Meridian process (bench/proxy.sh, idle RSS).
//! It needs glibc 2.36 or later at run time (Debian 12).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
