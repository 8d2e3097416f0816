//! Hostile and broken inputs (issue #4): every one must end with exit code 2 and a message that
//! names the file and what is wrong; none may panic, hang, run code or allocate beyond what the
//! file justifies. Every case runs the real binary under a deadline.
//!
//! Inputs are built here from bytes: pickles opcode by opcode (`Pk`), zip files with the `zip`
//! crate (then patched where a case needs a malformed archive), and cuts and patches of the real
//! fixtures that PyTorch wrote (fixtures/make_fixtures.py). A `Ckpt` builder makes a complete,
//! valid one-layer CPM checkpoint; each hostile case changes one thing about it, and
//! `builder_checkpoint_converts` proves the unchanged one converts, so every refusal below is
//! caused by the one change.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any single run may take; the slowest case (a million nested values) needs < 1 s.
const DEADLINE: Duration = Duration::from_secs(60);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny")
}

// ---------------------------------------------------------------------------------------------
// Running the binary under a deadline

struct Run {
    code: Option<i32>,
    stderr: String,
}

/// Run cpm-convert with stdout/stderr going to files (a chatty child can never block on a full
/// pipe), killing it if it outlives `DEADLINE`.
fn convert(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Run {
    let logs = tempfile::tempdir().unwrap();
    let err_path = logs.path().join("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cpm-convert"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn cpm-convert");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cpm-convert {args:?} still running after {DEADLINE:?} (hang); stderr so far: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.code(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

fn run_to(input: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<&std::ffi::OsStr> = vec![input.as_os_str(), "-o".as_ref(), out.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    convert(&args, &[])
}

/// Nothing at OUT_DIR and no staging directory beside it.
fn assert_nothing_left(out: &Path) {
    assert!(
        !out.exists(),
        "{} was created by a failed run",
        out.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("cpm-convert-"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

/// `input` is refused: exit 2, a message naming `names_file` and holding every needle, no panic,
/// nothing written.
fn assert_refused_as(input: &Path, names_file: &str, extra: &[&str], needles: &[&str]) -> String {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    let r = run_to(input, &out, extra);
    let e = r.stderr;
    assert_eq!(r.code, Some(2), "exit code for {}: {e}", input.display());
    assert!(!e.contains("panicked"), "{e}");
    assert!(
        e.contains(names_file),
        "message does not name {names_file:?}: {e}"
    );
    for n in needles {
        assert!(e.contains(n), "message lacks {n:?}: {e}");
    }
    assert_nothing_left(&out);
    // Shown with `cargo test --test hostile -- --nocapture`: the catalogue of messages.
    println!("REFUSED {}", e.trim());
    e
}

/// A single-file checkpoint holding `bytes`, refused with a message naming it.
fn assert_file_refused(bytes: &[u8], extra: &[&str], needles: &[&str]) -> String {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("hostile.pt");
    std::fs::write(&f, bytes).unwrap();
    assert_refused_as(&f, "hostile.pt", extra, needles)
}

fn assert_converts(bytes: &[u8], extra: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("model.pt");
    std::fs::write(&f, bytes).unwrap();
    let out = d.path().join("out");
    let r = run_to(&f, &out, extra);
    assert_eq!(r.code, Some(0), "conversion failed: {}", r.stderr);
    assert!(out.join("model.safetensors").is_file());
    d
}

// ---------------------------------------------------------------------------------------------
// Pickles, opcode by opcode (protocol 2, as torch.save writes)

#[derive(Clone, Default)]
struct Pk(Vec<u8>);

impl Pk {
    fn new() -> Pk {
        Pk(vec![0x80, 0x02])
    }
    fn raw(&mut self, b: &[u8]) -> &mut Pk {
        self.0.extend_from_slice(b);
        self
    }
    fn mark(&mut self) -> &mut Pk {
        self.raw(b"(")
    }
    fn str(&mut self, s: &str) -> &mut Pk {
        self.raw(b"X")
            .raw(&(s.len() as u32).to_le_bytes())
            .raw(s.as_bytes())
    }
    fn int(&mut self, i: i64) -> &mut Pk {
        if (0..256).contains(&i) {
            self.raw(&[b'K', i as u8])
        } else if i32::try_from(i).is_ok() {
            self.raw(b"J").raw(&(i as i32).to_le_bytes())
        } else {
            self.raw(&[0x8a, 8]).raw(&i.to_le_bytes())
        }
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Pk {
        self.raw(b"c")
            .raw(module.as_bytes())
            .raw(b"\n")
            .raw(name.as_bytes())
            .raw(b"\n")
    }
    fn tuple_of_ints(&mut self, v: &[i64]) -> &mut Pk {
        self.mark();
        for &i in v {
            self.int(i);
        }
        self.raw(b"t")
    }
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, t: &T) -> &mut Pk {
        self.global("torch._utils", "_rebuild_tensor_v2").mark();
        self.mark()
            .str("storage")
            .global("torch", t.class)
            .str(t.key)
            .str("cpu")
            .int(t.numel)
            .raw(b"tQ")
            .int(t.offset);
        self.tuple_of_ints(&t.size).tuple_of_ints(&t.stride);
        self.raw(b"\x89")
            .global("collections", "OrderedDict")
            .raw(b")R")
            .raw(b"tR")
    }
    fn stop(&mut self) -> Vec<u8> {
        self.raw(b".");
        self.0.clone()
    }
}

/// One tensor's persistent id and view.
#[derive(Clone)]
struct T {
    class: &'static str,
    key: &'static str,
    numel: i64,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl T {
    fn half(key: &'static str, numel: i64, offset: i64, size: &[i64]) -> T {
        let mut stride = vec![1i64; size.len()];
        for d in (0..size.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * size[d + 1];
        }
        T {
            class: "HalfStorage",
            key,
            numel,
            offset,
            size: size.to_vec(),
            stride,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Zip files

/// A torch zip file: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>` (STORED).
fn torch_zip(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/byteorder", opts).unwrap();
    z.write_all(b"little").unwrap();
    for (k, b) in storages {
        z.start_file(format!("archive/data/{k}"), opts).unwrap();
        z.write_all(b).unwrap();
    }
    z.start_file("archive/version", opts).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap().into_inner()
}

/// Central directory records of a zip: (offset of the record, local header offset, name).
fn central_records(z: &[u8]) -> Vec<(usize, usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = find(&z[i..], b"PK\x01\x02") {
        let at = i + p;
        let n = u16::from_le_bytes([z[at + 28], z[at + 29]]) as usize;
        let local = u32::from_le_bytes([z[at + 42], z[at + 43], z[at + 44], z[at + 45]]) as usize;
        out.push((at, local, z[at + 46..at + 46 + n].to_vec()));
        i = at + 4;
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn record(z: &[u8], name: &str) -> (usize, usize) {
    let r = central_records(z)
        .into_iter()
        .find(|r| r.2 == name.as_bytes())
        .unwrap_or_else(|| panic!("no entry {name}"));
    (r.0, r.1)
}

// ---------------------------------------------------------------------------------------------
// A complete, valid one-layer CPM checkpoint (model-parallel size 1), from scratch

const H: i64 = 4;
const V: i64 = 8;
const P: i64 = 4;

/// Every tensor the CPM-LM mapping needs, with its shape.
fn cpm_tensors() -> Vec<(String, Vec<i64>)> {
    let mut v = vec![
        ("word_embeddings.weight".to_string(), vec![V, H]),
        ("position_embeddings.weight".to_string(), vec![P, H]),
    ];
    let l = "transformer.layers.0.";
    for (n, s) in [
        ("input_layernorm.weight", vec![H]),
        ("input_layernorm.bias", vec![H]),
        ("attention.query_key_value.weight", vec![3 * H, H]),
        ("attention.query_key_value.bias", vec![3 * H]),
        ("attention.dense.weight", vec![H, H]),
        ("attention.dense.bias", vec![H]),
        ("post_attention_layernorm.weight", vec![H]),
        ("post_attention_layernorm.bias", vec![H]),
        ("mlp.dense_h_to_4h.weight", vec![4 * H, H]),
        ("mlp.dense_h_to_4h.bias", vec![4 * H]),
        ("mlp.dense_4h_to_h.weight", vec![H, 4 * H]),
        ("mlp.dense_4h_to_h.bias", vec![H]),
    ] {
        v.push((format!("{l}{n}"), s));
    }
    v.push(("transformer.final_layernorm.weight".into(), vec![H]));
    v.push(("transformer.final_layernorm.bias".into(), vec![H]));
    v
}

/// The builder: `{"module": {name: tensor, ...}, "mp_world_size": 1, <extra entries>}` with every
/// tensor a view into one flat float16 storage `0`. `edit` may replace one tensor's description;
/// `extra` appends raw pickle (key, value pairs) to the top-level dict.
struct Ckpt {
    edit: Option<(String, T)>,
    extra: Vec<u8>,
    storage_bytes: Option<usize>,
    /// Bytes of a second storage `1`, for an edited tensor of another dtype.
    extra_storage: Option<Vec<u8>>,
}

impl Ckpt {
    fn new() -> Ckpt {
        Ckpt {
            edit: None,
            extra: Vec::new(),
            storage_bytes: None,
            extra_storage: None,
        }
    }

    fn numel() -> i64 {
        cpm_tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<i64>())
            .sum()
    }

    fn pickle(&self) -> Vec<u8> {
        let mut p = Pk::new();
        p.raw(b"}").mark().str("module").raw(b"}").mark();
        let mut off = 0;
        for (name, shape) in cpm_tensors() {
            p.str(&name);
            match &self.edit {
                Some((n, t)) if *n == name => p.tensor(t),
                _ => p.tensor(&T::half("0", Ckpt::numel(), off, &shape)),
            };
            off += shape.iter().product::<i64>();
        }
        p.raw(b"u").str("mp_world_size").int(1);
        p.raw(&self.extra);
        p.raw(b"u");
        p.stop()
    }

    fn bytes(&self) -> Vec<u8> {
        // Small, finite, distinct values: 1.0 + i/1024 as float16.
        let n = self.storage_bytes.unwrap_or(Ckpt::numel() as usize * 2);
        let data: Vec<u8> = (0..n / 2)
            .flat_map(|i| {
                let bits = 0x3c00u16 + (i % 1024) as u16;
                bits.to_le_bytes()
            })
            .collect();
        match &self.extra_storage {
            Some(b) if !b.is_empty() => torch_zip(&self.pickle(), &[("0", &data), ("1", b)]),
            _ => torch_zip(&self.pickle(), &[("0", &data)]),
        }
    }

    fn with_tensor(name: &str, t: T) -> Ckpt {
        let mut c = Ckpt::new();
        c.edit = Some((name.to_string(), t));
        c
    }

    fn with_extra(extra: &[u8]) -> Ckpt {
        let mut c = Ckpt::new();
        c.extra = extra.to_vec();
        c
    }
}

#[test]
fn builder_checkpoint_converts() {
    // The control for every case built from `Ckpt`: unchanged, it converts.
    assert_converts(&Ckpt::new().bytes(), &["--heads", "1"]);
}

// ---------------------------------------------------------------------------------------------
// Pickles that would run code: nothing runs; the call becomes an inert object.

/// `cmd` as a shell command that would create `marker`.
fn touch(marker: &Path) -> String {
    format!("touch {}", marker.display())
}

/// REDUCE of `module.name` with one string argument.
fn call(p: &mut Pk, module: &str, name: &str, arg: &str) {
    p.global(module, name).str(arg).raw(b"\x85R");
}

#[test]
fn code_execution_payloads_are_inert_objects() {
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("PWNED");
    let cmd = touch(&marker);
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("os.system", {
            let mut p = Pk::new();
            call(&mut p, "os", "system", &cmd);
            p.stop()
        }),
        ("posix.system", {
            let mut p = Pk::new();
            call(&mut p, "posix", "system", &cmd);
            p.stop()
        }),
        ("builtins.eval", {
            let mut p = Pk::new();
            call(
                &mut p,
                "builtins",
                "eval",
                &format!("__import__('os').system('{cmd}')"),
            );
            p.stop()
        }),
        ("builtins.exec", {
            // Python 2 spelling of the module, as protocol-2 pickles write it.
            let mut p = Pk::new();
            call(
                &mut p,
                "__builtin__",
                "exec",
                &format!("import os; os.system('{cmd}')"),
            );
            p.stop()
        }),
        ("subprocess.Popen", {
            // NEWOBJ: cls.__new__(cls, *args), the other way to instantiate.
            let mut p = Pk::new();
            p.global("subprocess", "Popen")
                .mark()
                .str("touch")
                .str(&marker.to_string_lossy())
                .raw(b"l\x85\x81");
            p.stop()
        }),
        ("evil_module_that_does_not_exist.run", {
            let mut p = Pk::new();
            call(&mut p, "evil_module_that_does_not_exist", "run", &cmd);
            p.raw(b"}b"); // and BUILD a state onto it
            p.stop()
        }),
    ];
    for (what, pickle) in payloads {
        // As the whole object: refused as "not a dict", nothing executed.
        let z = torch_zip(&pickle, &[]);
        let e = assert_file_refused(&z, &[], &["top-level object is <", "expected a dict"]);
        assert!(e.contains(&format!("<{what} object>")), "{what}: {e}");
        assert!(!marker.exists(), "{what} ran");

        // Inside an otherwise valid checkpoint: tolerated as inert training state.
        let mut extra = Pk::default();
        extra.str("evil");
        extra.raw(&pickle[2..pickle.len() - 1]);
        assert_converts(&Ckpt::with_extra(&extra.0).bytes(), &["--heads", "1"]);
        assert!(!marker.exists(), "{what} ran");
    }
}

// ---------------------------------------------------------------------------------------------
// Resource exhaustion through the pickle

#[test]
fn a_million_nested_marks_is_refused() {
    let mut p = Pk::new();
    p.raw(&vec![b'('; 1_000_000]);
    let z = torch_zip(&p.stop(), &[]);
    assert_file_refused(&z, &[], &["pickle at byte", "more than 10000 nested MARKs"]);
}

#[test]
fn deeply_nested_lists_and_dicts_are_parsed_and_dropped_without_recursion() {
    // Each level holds the previous one through the memo: a million levels in 8 MB.
    let mut lists = Pk::new();
    lists.raw(b"]q\x000");
    for _ in 0..1_000_000 {
        lists.raw(b"]h\x00aq\x000");
    }
    lists.raw(b"h\x00");
    let z = torch_zip(&lists.stop(), &[]);
    assert_file_refused(
        &z,
        &[],
        &["top-level object is <list of 1>, expected a dict"],
    );

    // new = {}; new["k"] = prev; memo[0] = new
    let mut dicts = Pk::new();
    dicts.raw(b"}q\x000");
    for _ in 0..1_000_000 {
        dicts.raw(b"}X\x01\x00\x00\x00kh\x00sq\x000");
    }
    dicts.raw(b"h\x00");
    let z = torch_zip(&dicts.stop(), &[]);
    assert_file_refused(&z, &[], &["no tensors found"]);

    // The same depth through tuples, which cannot be built bottom-up by mutation.
    let mut tuples = Pk::new();
    tuples.raw(b")");
    for _ in 0..1_000_000 {
        tuples.raw(b"\x85");
    }
    let z = torch_zip(&tuples.stop(), &[]);
    assert_file_refused(&z, &[], &["top-level object is <tuple of 1>"]);
}

#[test]
fn memo_reuse_is_shared_never_copied() {
    // x0 = [1]; x(k+1) = [xk, xk]: 2^200 leaves if values were deep-copied.
    let mut p = Pk::new();
    p.raw(b"]K\x01aq\x00");
    for _ in 0..200 {
        p.raw(b"0]h\x00ah\x00aq\x00");
    }
    let mut extra = Pk::default();
    extra.str("tree");
    extra.raw(&p.0[2..]);
    // Inert training state, shared: the conversion goes through.
    assert_converts(&Ckpt::with_extra(&extra.0).bytes(), &["--heads", "1"]);
}

#[test]
fn memo_reuse_that_copies_is_bounded() {
    // set(<memoized list of 100k items>) 20k times: 2e9 copied values without the budget.
    let mut p = Pk::new();
    p.raw(b"]q\x00(K\x01");
    p.raw(&vec![b'2'; 100_000]);
    p.raw(b"e0");
    for _ in 0..20_000 {
        p.global("builtins", "set").raw(b"h\x00\x85R0");
    }
    p.raw(b"}");
    let z = torch_zip(&p.stop(), &[]);
    assert_file_refused(&z, &[], &["copies more values", "memo reuse"]);

    // _codecs.encode of a memoized 1 MB string, 100k times: 100 GB of bytes.
    let mut p = Pk::new();
    p.str(&"a".repeat(1 << 20)).raw(b"q\x000");
    for _ in 0..100_000 {
        p.global("_codecs", "encode")
            .raw(b"h\x00X\x06\x00\x00\x00latin1\x86R0");
    }
    p.raw(b"}");
    let z = torch_zip(&p.stop(), &[]);
    assert_file_refused(&z, &[], &["copies more values"]);
}

#[test]
fn more_values_than_any_checkpoint_holds_are_refused() {
    // 9 million one-byte DUPs appended to one list: ~0.5 GB of values from 9 MB of pickle
    // without the cap (the cap stops it at 8,388,608 values, a few hundred MB).
    let mut p = Pk::new();
    p.raw(b"]");
    for _ in 0..9 {
        p.raw(b"(K\x01").raw(&vec![b'2'; 1_000_000]).raw(b"e");
    }
    p.raw(b"0}");
    let z = torch_zip(&p.stop(), &[]);
    assert_file_refused(&z, &[], &["more than 8388608 values"]);
}

#[test]
fn self_referential_objects_do_not_loop() {
    // args = Namespace(); args.__setstate__(args): looking up args.num_attention_heads must end.
    let mut extra = Pk::default();
    extra
        .str("args")
        .global("argparse", "Namespace")
        .raw(b")\x81q\x09h\x09b");
    // And a list that contains itself.
    extra.str("loop").raw(b"]q\x0ah\x0aa");
    assert_converts(&Ckpt::with_extra(&extra.0).bytes(), &["--heads", "1"]);
}

#[test]
fn nested_rebuild_from_type_is_bounded() {
    // _rebuild_from_type_v2(f, type, (f, type, (...), {}), {}) a million deep.
    let mut p = Pk::new();
    p.global("torch._tensor", "_rebuild_from_type_v2")
        .raw(b"q\x00");
    p.raw(b"0)");
    for _ in 0..1_000_000 {
        p.raw(b"q\x010(h\x00Nh\x01Nt");
    }
    p.raw(b"q\x010h\x00h\x01R");
    let z = torch_zip(&p.stop(), &[]);
    assert_file_refused(&z, &[], &["_rebuild_from_type_v2 nested more than"]);
}

#[test]
fn length_fields_claiming_2_pow_60_bytes_are_refused_before_allocation() {
    let big = (1u64 << 60).to_le_bytes();
    for (op, name) in [
        (0x8du8, "BINUNICODE8"),
        (0x8e, "BINBYTES8"),
        (0x96, "BYTEARRAY8"),
    ] {
        let mut p = Pk::new();
        p.raw(&[op]).raw(&big).raw(b"xyz");
        let z = torch_zip(&p.stop(), &[]);
        let e = assert_file_refused(&z, &[], &["needs 1152921504606846976 more bytes"]);
        assert!(e.contains("truncated"), "{name}: {e}");
    }
    // BINUNICODE with 4 GiB - 1 and LONG4 with 2 GiB - 1.
    let mut p = Pk::new();
    p.raw(b"X\xff\xff\xff\xff");
    assert_file_refused(
        &torch_zip(&p.stop(), &[]),
        &[],
        &["needs 4294967295 more bytes"],
    );
    let mut p = Pk::new();
    p.raw(b"\x8b\xff\xff\xff\x7f");
    assert_file_refused(
        &torch_zip(&p.stop(), &[]),
        &[],
        &["needs 2147483647 more bytes"],
    );

    // A storage whose persistent id claims 2^60 elements.
    let t = T::half("0", 1 << 60, 0, &[V, H]);
    let c = Ckpt::with_tensor("word_embeddings.weight", t);
    assert_file_refused(
        &c.bytes(),
        &[],
        &[
            "storage `0` should hold 1152921504606846976 elements",
            "entry has",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Tensors that do not fit their storage

/// Refused while planning, with a message naming the file and the tensor.
fn tensor_refused(name: &str, t: T, needles: &[&str]) {
    let c = Ckpt::with_tensor(name, t);
    let mut all = vec![name];
    all.extend_from_slice(needles);
    assert_file_refused(&c.bytes(), &["--heads", "1"], &all);
}

/// Refused while unpickling, with a message naming the file and the pickle's byte offset.
fn rebuild_refused(name: &str, t: T, needles: &[&str]) {
    let c = Ckpt::with_tensor(name, t);
    let mut all = vec!["pickle at byte"];
    all.extend_from_slice(needles);
    assert_file_refused(&c.bytes(), &["--heads", "1"], &all);
}

#[test]
fn storage_shorter_than_its_tensor_is_refused() {
    let n = Ckpt::numel();
    // The view runs past the end of the storage.
    tensor_refused(
        "transformer.final_layernorm.bias",
        T::half("0", n, n - 2, &[H]),
        &["needs bytes", "which holds"],
    );
    // The storage's entry is shorter than the persistent id says.
    let mut c = Ckpt::new();
    c.storage_bytes = Some(100);
    assert_file_refused(
        &c.bytes(),
        &[],
        &["storage `0` should hold", "its entry has 100 bytes"],
    );
}

#[test]
fn negative_offsets_sizes_and_strides_are_refused() {
    let n = Ckpt::numel();
    rebuild_refused(
        "word_embeddings.weight",
        T::half("0", n, -1, &[V, H]),
        &["negative storage offset -1"],
    );
    let mut t = T::half("0", n, 0, &[V, H]);
    t.size = vec![-V, H];
    rebuild_refused(
        "word_embeddings.weight",
        t,
        &["size has a negative entry -8"],
    );
    let mut t = T::half("0", n, 0, &[V, H]);
    t.stride = vec![H, -1];
    rebuild_refused(
        "word_embeddings.weight",
        t,
        &["stride has a negative entry -1"],
    );
}

#[test]
fn sizes_and_strides_whose_products_overflow_are_refused() {
    let n = Ckpt::numel();
    let mut t = T::half("0", n, 0, &[V, H]);
    t.size = vec![1 << 62, 8];
    t.stride = vec![8, 1];
    tensor_refused("word_embeddings.weight", t, &["overflows"]);
    let mut t = T::half("0", n, 0, &[V, H]);
    t.stride = vec![1 << 62, 1];
    tensor_refused("word_embeddings.weight", t, &["overflows"]);
    let mut t = T::half("0", n, 0, &[V, H]);
    t.offset = i64::MAX;
    tensor_refused("word_embeddings.weight", t, &["overflows"]);
    // Stride 0 (torch's expand): 2^40 elements described by one.
    let mut t = T::half("0", n, 0, &[V, H]);
    t.size = vec![1 << 40, H];
    t.stride = vec![0, 1];
    tensor_refused("word_embeddings.weight", t, &["overlapping (expanded)"]);
    // More dimensions than any tensor has.
    let mut t = T::half("0", n, 0, &[V, H]);
    t.size = vec![1; 100];
    t.stride = vec![1; 100];
    rebuild_refused("word_embeddings.weight", t, &["100 dimensions"]);
}

#[test]
fn unknown_storage_types_and_dtype_lies_are_refused() {
    let n = Ckpt::numel();
    let mut t = T::half("0", n, 0, &[V, H]);
    t.class = "EvilStorage";
    rebuild_refused(
        "word_embeddings.weight",
        t,
        &["unknown storage type `EvilStorage`"],
    );
    // A tensor naming a storage the archive does not hold.
    let t = T::half("9", n, 0, &[V, H]);
    assert_file_refused(
        &Ckpt::with_tensor("word_embeddings.weight", t).bytes(),
        &[],
        &["storage `9`", "no entry data/9"],
    );
}

#[test]
fn shapes_and_dtypes_the_mapping_cannot_merge_are_refused() {
    // (tensor, shape, storage class, the refusal it must produce). `None`: tolerated (one
    // float32 tensor among float16 ones is kept as float32 under `--dtype keep`); it must still
    // end cleanly.
    let n = Ckpt::numel();
    let l = "transformer.layers.0.";
    let cases: Vec<(String, Vec<i64>, &str, Option<&str>)> = vec![
        (
            "word_embeddings.weight".into(),
            vec![2, V, H / 2],
            "HalfStorage",
            Some("expected 1 or 2 dimensions"),
        ),
        (
            format!("{l}attention.dense.weight"),
            vec![H * H],
            "HalfStorage",
            Some("needs 2 dimensions"),
        ),
        (
            format!("{l}attention.query_key_value.weight"),
            vec![3 * H * H],
            "HalfStorage",
            Some("needs 2 dimensions"),
        ),
        (
            format!("{l}attention.query_key_value.weight"),
            vec![H, 3 * H],
            "HalfStorage",
            Some("expected a multiple of 3"),
        ),
        (
            format!("{l}attention.query_key_value.bias"),
            vec![H],
            "HalfStorage",
            Some("expected a multiple of 3"),
        ),
        (
            "word_embeddings.weight".into(),
            vec![V, H],
            "LongStorage",
            Some("is int64, expected a floating-point weight"),
        ),
        (
            "word_embeddings.weight".into(),
            vec![V, H],
            "BoolStorage",
            Some("is bool, expected a floating-point weight"),
        ),
        (
            "word_embeddings.weight".into(),
            vec![V * H],
            "HalfStorage",
            Some("expected [vocab, hidden]"),
        ),
        (
            "word_embeddings.weight".into(),
            vec![0, H],
            "HalfStorage",
            Some("expected [vocab, hidden]"),
        ),
        (
            format!("{l}input_layernorm.weight"),
            vec![2, 2],
            "HalfStorage",
            Some("expected [hidden]"),
        ),
        (
            format!("{l}mlp.dense_h_to_4h.weight"),
            vec![H, 4 * H],
            "HalfStorage",
            Some("expected [hidden,"),
        ),
        (
            "transformer.final_layernorm.bias".into(),
            vec![H],
            "FloatStorage",
            None,
        ),
    ];
    for (name, shape, class, refusal) in cases {
        let mut t = T::half("0", n, 0, &shape);
        t.class = class;
        let mut c = if class == "HalfStorage" {
            Ckpt::with_tensor(&name, t)
        } else {
            // Its own storage of the right size, so the file itself is consistent.
            t.key = "1";
            t.numel = shape.iter().product();
            let mut c = Ckpt::with_tensor(&name, t);
            c.extra_storage = Some(vec![0u8; shape.iter().product::<i64>() as usize * 8]);
            c
        };
        match refusal {
            Some(needle) => {
                assert_file_refused(&c.bytes(), &["--heads", "1"], &[&name, needle]);
            }
            None => {
                c.extra.clear();
                let d = tempfile::tempdir().unwrap();
                let f = d.path().join("hostile.pt");
                std::fs::write(&f, c.bytes()).unwrap();
                let out = d.path().join("out");
                let r = run_to(&f, &out, &["--heads", "1"]);
                let e = &r.stderr;
                assert!(!e.contains("panicked"), "{name} {shape:?}: {e}");
                assert!(matches!(r.code, Some(0) | Some(2)), "{name} {shape:?}: {e}");
                if r.code == Some(2) {
                    assert_nothing_left(&out);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed zip archives

fn real_zip() -> Vec<u8> {
    std::fs::read(fixtures().join("ckpt/100/mp_rank_00_model_states.pt")).unwrap()
}
const REAL_PREFIX: &str = "mp_rank_00_model_states";

#[test]
fn compressed_zip_entries_are_refused() {
    // Mark data.pkl as deflated in both headers, as a zip tool recompressing it would.
    for (entry, also_local) in [("data.pkl", true), ("data/0", true), ("data/0", false)] {
        let mut z = real_zip();
        let name = format!("{REAL_PREFIX}/{entry}");
        let (cd, local) = record(&z, &name);
        z[cd + 10] = 8;
        if also_local {
            z[local + 8] = 8;
        }
        assert_file_refused(&z, &[], &[&name, "compressed"]);
    }
    // Only the local header says deflate: the two headers disagree.
    let mut z = real_zip();
    let name = format!("{REAL_PREFIX}/data/1");
    let (_, local) = record(&z, &name);
    z[local + 8] = 8;
    assert_file_refused(&z, &[], &[&name, "compression method 8"]);
}

#[test]
fn duplicate_zip_entries_are_refused() {
    // Two storages: rename data/1 to data/0 (same length) in both headers of the real file.
    let mut z = real_zip();
    let (from, to) = (
        format!("{REAL_PREFIX}/data/1"),
        format!("{REAL_PREFIX}/data/0"),
    );
    let (cd, local) = record(&z, &from);
    z[cd + 46..cd + 46 + to.len()].copy_from_slice(to.as_bytes());
    z[local + 30..local + 30 + to.len()].copy_from_slice(to.as_bytes());
    let e = assert_file_refused(&z, &[], &[]);
    assert!(
        e.contains(&format!("`{to}` appears twice")) || e.to_lowercase().contains("duplicate"),
        "{e}"
    );
    // Two pickles: which one would a reader believe?
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("a/data.pkl", o).unwrap();
    w.write_all(&Pk::new().raw(b"}").stop()).unwrap();
    w.start_file("a/data.pkX", o).unwrap();
    w.write_all(&Pk::new().raw(b"]").stop()).unwrap();
    let mut z = w.finish().unwrap().into_inner();
    let (cd, local) = record(&z, "a/data.pkX");
    z[cd + 46 + 9] = b'l';
    z[local + 30 + 9] = b'l';
    let e = assert_file_refused(&z, &[], &[]);
    assert!(
        e.contains("`a/data.pkl` appears twice") || e.to_lowercase().contains("duplicate"),
        "{e}"
    );
}

#[test]
fn central_directory_disagreeing_with_local_headers_is_refused() {
    // The local header names another file.
    let mut z = real_zip();
    let name = format!("{REAL_PREFIX}/data.pkl");
    let (_, local) = record(&z, &name);
    z[local + 30 + name.len() - 1] = b'x';
    assert_file_refused(
        &z,
        &[],
        &[&name, "local header at byte 0 names", "central directory"],
    );

    // The central directory points into the middle of another entry's payload.
    let mut z = real_zip();
    let (cd, local) = record(&z, &format!("{REAL_PREFIX}/data/3"));
    let wrong = (local + 100) as u32;
    z[cd + 42..cd + 46].copy_from_slice(&wrong.to_le_bytes());
    let e = assert_file_refused(&z, &[], &[]);
    assert!(
        e.contains("no local header at byte") || e.contains("Invalid local file header"),
        "{e}"
    );

    // Two central records point at the same local header and bytes (renamed to match).
    let mut z = real_zip();
    let (cd0, local0) = record(&z, &format!("{REAL_PREFIX}/data/3"));
    let (cd1, _) = record(&z, &format!("{REAL_PREFIX}/data/4"));
    z[cd1 + 42..cd1 + 46].copy_from_slice(&(local0 as u32).to_le_bytes());
    let _ = cd0;
    let e = assert_file_refused(&z, &[], &[]);
    assert!(
        e.contains("central directory") || e.contains("overlap") || e.contains("zip"),
        "{e}"
    );

    // An entry size that runs past the end of the file.
    let mut z = real_zip();
    let (cd, _) = record(&z, &format!("{REAL_PREFIX}/data/2"));
    for off in [20, 24] {
        z[cd + off..cd + off + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    }
    let e = assert_file_refused(&z, &[], &[]);
    assert!(e.contains("truncated") || e.contains("zip"), "{e}");
}

#[test]
fn foreign_zip_layouts_are_refused() {
    let pk = Pk::new().raw(b"}").stop();
    // An entry outside the archive folder.
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("data.pkl", o).unwrap();
    z.write_all(&pk).unwrap();
    let z = z.finish().unwrap().into_inner();
    assert_file_refused(&z, &[], &["not inside a folder"]);
    // Two folders.
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.start_file("a/data.pkl", o).unwrap();
    z.write_all(&pk).unwrap();
    z.start_file("b/data/0", o).unwrap();
    z.write_all(b"xx").unwrap();
    let z = z.finish().unwrap().into_inner();
    assert_file_refused(&z, &[], &["two folders"]);
    // A TorchScript archive.
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.start_file("m/data.pkl", o).unwrap();
    z.write_all(&pk).unwrap();
    z.start_file("m/constants.pkl", o).unwrap();
    z.write_all(&pk).unwrap();
    let z = z.finish().unwrap().into_inner();
    assert_file_refused(&z, &[], &["TorchScript"]);
    // Big-endian storages.
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.start_file("m/data.pkl", o).unwrap();
    z.write_all(&pk).unwrap();
    z.start_file("m/byteorder", o).unwrap();
    z.write_all(b"big").unwrap();
    let z = z.finish().unwrap().into_inner();
    assert_file_refused(&z, &[], &["byte order `big`"]);
    // No data.pkl at all.
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.start_file("m/version", o).unwrap();
    z.write_all(b"3").unwrap();
    let z = z.finish().unwrap().into_inner();
    assert_file_refused(&z, &[], &["no `<folder>/data.pkl`"]);
}

// ---------------------------------------------------------------------------------------------
// Legacy stream files

fn real_legacy() -> Vec<u8> {
    std::fs::read(fixtures().join("ckpt-legacy/mp_rank_00_model_states.pt")).unwrap()
}

/// Byte offset of the first storage's i64 element count: just after the key list pickle.
fn legacy_data_start(b: &[u8]) -> usize {
    let mut pos = 0;
    for _ in 0..5 {
        pos += cpm_convert::torch::pickle::parse(&b[pos..], Path::new("x"), pos as u64)
            .unwrap()
            .consumed;
    }
    pos
}

#[test]
fn legacy_element_counts_that_lie_are_refused() {
    let base = real_legacy();
    let at = legacy_data_start(&base);
    for (count, needle) in [
        (
            1i64 << 60,
            "holds 1152921504606846976 elements but the object declares",
        ),
        (-5, "negative element count -5"),
        (3, "holds 3 elements but the object declares"),
    ] {
        let mut b = base.clone();
        b[at..at + 8].copy_from_slice(&count.to_le_bytes());
        assert_file_refused(&b, &["--heads", "4"], &[needle]);
    }
}

// ---------------------------------------------------------------------------------------------
// Truncation, empty files, random bytes

#[test]
fn truncated_files_are_refused_at_every_cut() {
    // The binary, at ~100 cut points per format (including the last bytes, where the zip
    // central directory lives)...
    for (base, extra) in [(real_zip(), vec![]), (real_legacy(), vec!["--heads", "4"])] {
        let len = base.len();
        let mut cuts: Vec<usize> = (1..100).map(|i| i * len / 100).collect();
        cuts.extend([
            1,
            2,
            4,
            13,
            14,
            15,
            64,
            len - 1,
            len - 2,
            len - 22,
            len - 23,
            len - 100,
        ]);
        for cut in cuts {
            assert_file_refused(&base[..cut], &extra, &[]);
        }
    }
}

#[test]
fn truncated_files_are_refused_by_the_reader_at_every_seventh_byte() {
    // ...and the reader in-process at every 7th byte (some 55,000 parses).
    use cpm_convert::torch::parse_bytes;
    for base in [real_zip(), real_legacy()] {
        for cut in (0..base.len()).step_by(7) {
            match parse_bytes(&base[..cut], Path::new("cut.pt")) {
                Ok(_) => panic!("a file cut at byte {cut} of {} parsed", base.len()),
                Err(e) => assert!(e.to_string().contains("cut.pt"), "{e}"),
            }
        }
    }
}

#[test]
fn empty_file_is_refused() {
    assert_file_refused(b"", &[], &["file is empty"]);
}

#[test]
fn random_bytes_are_refused() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    for n in [1, 7, 100, 4096, 1 << 20] {
        assert_file_refused(&rand(n), &[], &["not a torch checkpoint"]);
        // Behind each format's signature, so the zip and pickle readers see the noise.
        let mut z = b"PK\x03\x04".to_vec();
        z.extend(rand(n));
        assert_file_refused(&z, &[], &[]);
        let mut l = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19".to_vec();
        l.extend(rand(n));
        assert_file_refused(&l, &[], &[]);
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint layout: ranks and tracker

fn rank(dir: &str, r: usize) -> PathBuf {
    fixtures()
        .join(dir)
        .join(format!("mp_rank_{r:02}_model_states.pt"))
}

fn assemble(files: &[(&str, PathBuf)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, src) in files {
        let dst = d.path().join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
    d
}

#[test]
fn extra_or_skipped_ranks_are_refused() {
    // An extra rank: mp_world_size says 2, three files.
    let d = assemble(&[
        ("mp_rank_00_model_states.pt", rank("ckpt/100", 0)),
        ("mp_rank_01_model_states.pt", rank("ckpt/100", 1)),
        ("mp_rank_02_model_states.pt", rank("ckpt/100", 1)),
    ]);
    assert_refused_as(
        d.path(),
        "mp_rank_00_model_states.pt",
        &[],
        &["mp_world_size = 2", "3 rank file(s)", "more rank files"],
    );
    // A gap: ranks 0 and 2.
    let d = assemble(&[
        ("mp_rank_00_model_states.pt", rank("ckpt/100", 0)),
        ("mp_rank_02_model_states.pt", rank("ckpt/100", 1)),
    ]);
    let shown = d.path().file_name().unwrap().to_string_lossy().into_owned();
    assert_refused_as(
        d.path(),
        &shown,
        &[],
        &["rank 1 is missing", "found ranks 0, 2"],
    );
    // Two files claiming one rank (file and Megatron folder layout).
    let d = assemble(&[
        ("mp_rank_00_model_states.pt", rank("ckpt/100", 0)),
        ("mp_rank_00/model_optim_rng.pt", rank("ckpt/100", 0)),
    ]);
    assert_refused_as(
        d.path(),
        &shown_name(&d),
        &[],
        &["two files claim model-parallel rank 0"],
    );
}

fn shown_name(d: &tempfile::TempDir) -> String {
    d.path().file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn bad_tracker_files_are_refused() {
    let d = assemble(&[("100/mp_rank_00_model_states.pt", rank("ckpt/100", 0))]);
    let tracker = d.path().join("latest_checkpointed_iteration.txt");
    for (content, needle) in [
        (b"200\n".to_vec(), "iteration `200`"),
        (b"../100\n".to_vec(), "expected an iteration number"),
        (
            b"\xff\xfe1\x00".to_vec(),
            "latest_checkpointed_iteration.txt",
        ),
        (vec![b'1'; 10 << 20], "latest_checkpointed_iteration.txt"),
        (b"".to_vec(), "expected an iteration number"),
    ] {
        std::fs::write(&tracker, &content).unwrap();
        assert_refused_as(
            d.path(),
            "latest_checkpointed_iteration.txt",
            &[],
            &[needle],
        );
    }
}

#[test]
fn a_fifo_posing_as_a_rank_file_is_refused_not_waited_on() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("mp_rank_00_model_states.pt");
    let ok = Command::new("mkfifo")
        .arg(&f)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("mkfifo unavailable; skipped");
        return;
    }
    assert_refused_as(
        d.path(),
        "mp_rank_00_model_states.pt",
        &[],
        &["not a regular file"],
    );
}
