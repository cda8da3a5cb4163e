//! `include/nvme_vfio.h` matches the library: it declares exactly the
//! functions the library exports, its structs have the Rust layouts, and
//! the C example builds against it with every warning an error and runs
//! (against the software controller).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use nvmevfio::{NvmevCompletion, NvmevCtrlOpts, NvmevNsInfo, NvmevQpairOpts};

const HEADER: &str = include_str!("../include/nvme_vfio.h");
const SOURCE: &str = include_str!("../src/lib.rs");

/// The names `nvmev_*` directly followed by `(` in `text`, after `marker`
/// when given (the word before the name).
fn functions(text: &str, marker: Option<&str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("nvmev_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !text[i + name.len()..].starts_with('(') {
            continue;
        }
        if let Some(m) = marker {
            if !text[..i].trim_end().ends_with(m) {
                continue;
            }
        }
        out.insert(name);
    }
    out
}

#[test]
fn the_header_declares_exactly_the_exported_functions() {
    // Comments of the header mention functions too: only declarations,
    // where the name follows a type (`int`, `void`, `*`, ...).
    let declared: BTreeSet<String> = HEADER
        .lines()
        .filter(|l| !l.trim_start().starts_with('/') && !l.trim_start().starts_with('*'))
        .flat_map(|l| functions(l, None))
        .collect();
    let exported = functions(SOURCE, Some("extern \"C\" fn"));
    assert!(exported.len() >= 20, "{exported:?}");
    assert_eq!(declared, exported, "header vs #[no_mangle] functions");
    // And each exported function is #[no_mangle].
    for name in &exported {
        let at = SOURCE.find(&format!("fn {name}(")).unwrap();
        let before = &SOURCE[..at];
        let attr = before.rfind("#[no_mangle]").expect("no_mangle");
        assert!(
            !before[attr..].contains("fn "),
            "{name} has no #[no_mangle] right above it"
        );
    }
}

/// The target directory this test runs from (`target/debug`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

/// Compiles C `source` (a file) with the header and the static library
/// into `out`; `None` (with the reason printed) when there is no C
/// compiler.
fn compile(source: &Path, out: &Path) -> Option<()> {
    // `cargo test` leaves the library its tests link in deps/; `cargo
    // build` also copies it up.
    let dir = target_dir();
    let lib = [dir.join("deps/libnvmevfio.a"), dir.join("libnvmevfio.a")]
        .into_iter()
        .find(|l| l.exists())
        .unwrap_or_else(|| panic!("libnvmevfio.a not built under {}", dir.display()));
    let r = Command::new("cc")
        .args([
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-std=c11",
            "-D_GNU_SOURCE",
        ])
        .arg("-I")
        .arg(include_dir())
        .arg(source)
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(out)
        .output();
    match r {
        Err(e) => {
            eprintln!("SKIPPED: no C compiler (cc: {e})");
            None
        }
        Ok(o) => {
            assert!(
                o.status.success(),
                "cc failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(())
        }
    }
}

#[test]
fn the_structs_have_the_same_layout_in_c() {
    let dir = tempdir("layout");
    let src = dir.join("layout.c");
    std::fs::write(
        &src,
        r#"#include <stddef.h>
#include <stdio.h>
#include "nvme_vfio.h"
#define S(t) printf(#t " %zu %zu\n", sizeof(struct t), _Alignof(struct t))
#define O(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f))
int main(void) {
    S(nvmev_ctrl_opts); O(nvmev_ctrl_opts, io_queues); O(nvmev_ctrl_opts, interrupts);
    O(nvmev_ctrl_opts, no_hugepages); O(nvmev_ctrl_opts, io_timeout_ms);
    S(nvmev_ns_info); O(nvmev_ns_info, blocks); O(nvmev_ns_info, block_size);
    O(nvmev_ns_info, max_transfer); O(nvmev_ns_info, zoned);
    S(nvmev_qpair_opts); O(nvmev_qpair_opts, depth);
    S(nvmev_completion); O(nvmev_completion, tag); O(nvmev_completion, status);
    O(nvmev_completion, nvme_status);
    return 0;
}
"#,
    )
    .unwrap();
    let bin = dir.join("layout");
    if compile(&src, &bin).is_none() {
        return;
    }
    let out = Command::new(&bin).output().unwrap();
    let got = String::from_utf8(out.stdout).unwrap();
    use std::mem::{align_of, offset_of, size_of};
    let want = format!(
        "nvmev_ctrl_opts {} {}\nnvmev_ctrl_opts.io_queues {}\nnvmev_ctrl_opts.interrupts {}\n\
         nvmev_ctrl_opts.no_hugepages {}\nnvmev_ctrl_opts.io_timeout_ms {}\n\
         nvmev_ns_info {} {}\nnvmev_ns_info.blocks {}\nnvmev_ns_info.block_size {}\n\
         nvmev_ns_info.max_transfer {}\nnvmev_ns_info.zoned {}\n\
         nvmev_qpair_opts {} {}\nnvmev_qpair_opts.depth {}\n\
         nvmev_completion {} {}\nnvmev_completion.tag {}\nnvmev_completion.status {}\n\
         nvmev_completion.nvme_status {}\n",
        size_of::<NvmevCtrlOpts>(),
        align_of::<NvmevCtrlOpts>(),
        offset_of!(NvmevCtrlOpts, io_queues),
        offset_of!(NvmevCtrlOpts, interrupts),
        offset_of!(NvmevCtrlOpts, no_hugepages),
        offset_of!(NvmevCtrlOpts, io_timeout_ms),
        size_of::<NvmevNsInfo>(),
        align_of::<NvmevNsInfo>(),
        offset_of!(NvmevNsInfo, blocks),
        offset_of!(NvmevNsInfo, block_size),
        offset_of!(NvmevNsInfo, max_transfer),
        offset_of!(NvmevNsInfo, zoned),
        size_of::<NvmevQpairOpts>(),
        align_of::<NvmevQpairOpts>(),
        offset_of!(NvmevQpairOpts, depth),
        size_of::<NvmevCompletion>(),
        align_of::<NvmevCompletion>(),
        offset_of!(NvmevCompletion, tag),
        offset_of!(NvmevCompletion, status),
        offset_of!(NvmevCompletion, nvme_status),
    );
    assert_eq!(got, want);
}

/// examples/c/nvme-hello.c, built against the header and the static
/// library, runs against the software controller: writes, reads back and
/// compares, through DMA and registered memory.
#[test]
fn the_c_example_builds_and_runs_on_the_software_controller() {
    let dir = tempdir("hello");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/c/nvme-hello.c");
    let bin = dir.join("nvme-hello");
    if compile(&src, &bin).is_none() {
        return;
    }
    let out = Command::new(&bin).arg("sim").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nvme-hello sim failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("compared 131072 bytes: OK"), "{stdout}");
    assert!(stdout.contains("past the end of namespace 1"), "{stdout}");

    let out = Command::new(&bin).arg("0000:ff:1f.7").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("0000:ff:1f.7"), "{stderr}");
}

/// A fresh directory under the target's temporary directory.
fn tempdir(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("capi-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
