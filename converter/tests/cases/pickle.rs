//! Pickles that would run code, and resource exhaustion through the pickle.

use std::path::Path;

use super::*;

pub fn code_execution(marker: &Path) -> Vec<Case> {
    let cmd = format!("touch {}", marker.display());
    let one = |module: &str, name: &str, arg: &str| {
        let mut p = Pk::new();
        call(&mut p, module, name, arg);
        p
    };
    let mut popen = Pk::new();
    popen
        .global("subprocess", "Popen")
        .mark()
        .str("touch")
        .str(&marker.to_string_lossy())
        .raw(b"l\x85\x81");
    let mut evil = one("evil_module_that_does_not_exist", "run", &cmd);
    evil.raw(b"}b"); // and BUILD a state onto it
    let payloads = vec![
        ("os.system", one("os", "system", &cmd)),
        ("posix.system", one("posix", "system", &cmd)),
        (
            "builtins.eval",
            one(
                "builtins",
                "eval",
                &format!("__import__('os').system('{cmd}')"),
            ),
        ),
        // Python 2 spelling of the module, as protocol-2 pickles write it.
        (
            "builtins.exec",
            one(
                "__builtin__",
                "exec",
                &format!("import os; os.system('{cmd}')"),
            ),
        ),
        // NEWOBJ: cls.__new__(cls, *args), the other way to instantiate.
        ("subprocess.Popen", popen),
        ("evil_module_that_does_not_exist.run", evil),
    ];
    let mut out = Vec::new();
    for (what, mut p) in payloads {
        let pickle = p.stop();
        // As the whole object: refused as "not a dict".
        let shown = format!("<{what} object>");
        out.push(Case::pickle_refused(
            format!("code execution: {what} as the file"),
            pickle.clone(),
            &["top-level object is <", "expected a dict", &shown],
        ));
        // Inside an otherwise valid checkpoint: tolerated as inert training state.
        out.push(
            Case::converts(
                format!("code execution: {what} inside a checkpoint"),
                in_checkpoint("evil", &pickle[2..pickle.len() - 1]),
            )
            .args(&["--heads", "1"]),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Resource exhaustion through the pickle

/// `body` repeated `n` times between `head` and `tail`, as a protocol-2 pickle.
pub fn repeated(head: &[u8], body: &[u8], n: usize, tail: &[u8]) -> Vec<u8> {
    let mut p = Pk::new();
    p.raw(head);
    for _ in 0..n {
        p.raw(body);
    }
    p.raw(tail);
    p.stop()
}

pub fn nesting() -> Vec<Case> {
    let mut out = vec![Case::pickle_refused(
        "a million nested MARKs",
        repeated(b"", b"(", 1_000_000, b""),
        &["pickle at byte", "more than 10000 nested MARKs"],
    )];
    // Each level holds the previous one through the memo. 100,000 levels parse (and drop
    // without recursion); a million, 8 MB of pickle, exceed the memory budget.
    for (levels, fits) in [(100_000, true), (1_000_000, false)] {
        let budget = "values would take more than";
        let lists = repeated(b"]q\x000", b"]h\x00aq\x000", levels, b"h\x00");
        let dicts = repeated(
            b"}q\x000",
            b"}X\x01\x00\x00\x00kh\x00sq\x000",
            levels,
            b"h\x00",
        );
        let tuples = repeated(b")", b"\x85", levels, b"");
        for (what, pickle, parsed) in [
            (
                "lists",
                lists,
                "top-level object is <list of 1>, expected a dict",
            ),
            ("dicts", dicts, "no tensors found"),
            ("tuples", tuples, "top-level object is <tuple of 1>"),
        ] {
            let needle = if fits { parsed } else { budget };
            out.push(Case::pickle_refused(
                format!("{levels} nested {what}"),
                pickle,
                &[needle],
            ));
        }
    }
    // x0 = [1]; x(k+1) = [xk, xk]: 2^200 leaves if values were deep-copied. Shared: converts.
    let tree = repeated(b"]K\x01aq\x00", b"0]h\x00ah\x00aq\x00", 200, b"");
    out.push(
        Case::converts(
            "memo reuse is shared, never copied",
            in_checkpoint("tree", &tree[2..tree.len() - 1]),
        )
        .args(&["--heads", "1"]),
    );
    // args = Namespace(); args.__setstate__(args), and a list that contains itself: lookups
    // through them must end.
    let mut extra = Pk::default();
    extra
        .str("args")
        .global("argparse", "Namespace")
        .raw(b")\x81q\x09h\x09b");
    extra.str("loop").raw(b"]q\x0ah\x0aa");
    out.push(
        Case::converts(
            "self-referential objects",
            Ckpt::with_extra(&extra.0).bytes(),
        )
        .args(&["--heads", "1"]),
    );
    // _rebuild_from_type_v2(f, type, (f, type, (...), {}), {}) 10,000 deep.
    let mut p = Pk::new();
    p.global("torch._tensor", "_rebuild_from_type_v2")
        .raw(b"q\x00");
    p.raw(b"0)");
    for _ in 0..10_000 {
        p.raw(b"q\x010(h\x00Nh\x01Nt");
    }
    p.raw(b"q\x010h\x00h\x01R");
    out.push(Case::pickle_refused(
        "nested _rebuild_from_type_v2",
        p.stop(),
        &["_rebuild_from_type_v2 nested more than 4 deep"],
    ));
    out
}

pub fn memo_copies() -> Vec<Case> {
    // set(<memoized list of 100k items>) 20k times: 2e9 copied values without the budget.
    let mut p = Pk::new();
    p.raw(b"]q\x00(K\x01");
    p.raw(&vec![b'2'; 100_000]);
    p.raw(b"e0");
    for _ in 0..20_000 {
        p.global("builtins", "set").raw(b"h\x00\x85R0");
    }
    p.raw(b"}");
    let sets = Case::pickle_refused(
        "set() of a memoized list, 20,000 times",
        p.stop(),
        &[
            "values would take more than",
            "copies of memoized containers",
        ],
    );
    // _codecs.encode of a memoized 1 MB string, 100k times: 100 GB of bytes.
    let mut p = Pk::new();
    p.str(&"a".repeat(1 << 20)).raw(b"q\x000");
    for _ in 0..100_000 {
        p.global("_codecs", "encode")
            .raw(b"h\x00X\x06\x00\x00\x00latin1\x86R0");
    }
    p.raw(b"}");
    let encode = Case::pickle_refused(
        "_codecs.encode of a memoized 1 MiB string, 100,000 times",
        p.stop(),
        &["values would take more than", "copies of memoized strings"],
    );
    vec![sets, encode]
}

/// How a message shows the 1 MiB string: its first 80 characters and its length.
const LONG_SHOWN: &str = "… (1048576 bytes)";

/// A persistent id `('storage', HalfStorage, <memo 1>, 'cpu', 1)`.
pub fn persistent_id_of_memo_1(p: &mut Pk) -> &mut Pk {
    p.mark()
        .str("storage")
        .global("torch", "HalfStorage")
        .raw(b"h\x01")
        .str("cpu")
        .int(1)
        .raw(b"tQ")
}

/// A pickle whose first value, memo 1, is a string of `len` bytes.
pub fn with_memo_1(len: usize) -> Pk {
    let mut p = Pk::new();
    p.str(&"k".repeat(len)).raw(b"q\x010");
    p
}

/// Memo 1 (a `len`-byte string) as the storage key of `n` persistent ids.
pub fn memo_key_in_persistent_ids(len: usize, n: usize) -> Vec<u8> {
    let mut p = with_memo_1(len);
    for _ in 0..n {
        persistent_id_of_memo_1(&mut p).raw(b"0");
    }
    p.raw(b"}").stop()
}

/// `_rebuild_tensor_v2` of one memoized storage (key: memo 1, `len` bytes) and memoized
/// arguments (`ndim` dimensions), `n` times.
pub fn memo_rebuilds(len: usize, ndim: usize, n: usize) -> Vec<u8> {
    let mut p = with_memo_1(len);
    p.global("torch._utils", "_rebuild_tensor_v2")
        .raw(b"q\x040");
    p.mark();
    persistent_id_of_memo_1(&mut p);
    p.int(0)
        .tuple_of_ints(&vec![1; ndim])
        .tuple_of_ints(&vec![0; ndim])
        .raw(b"\x89)tq\x030");
    for _ in 0..n {
        p.raw(b"h\x04h\x03R0");
    }
    p.raw(b"}").stop()
}

/// Memo 1 (a `len`-byte string) as the module (or class) name of `n` STACK_GLOBALs.
pub fn memo_name_in_stack_globals(len: usize, n: usize, as_module: bool) -> Vec<u8> {
    let mut p = with_memo_1(len);
    let head: &[u8] = if as_module {
        b"h\x01X\x01\x00\x00\x00x"
    } else {
        b"X\x05\x00\x00\x00torchh\x01"
    };
    for _ in 0..n {
        p.raw(head).raw(b"\x930");
    }
    p.raw(b"}").stop()
}

/// REDUCE of one memoized global whose module and class are memo 1 (`len` bytes), `n` times.
pub fn memo_global_reduced(len: usize, n: usize) -> Vec<u8> {
    let mut p = with_memo_1(len);
    p.raw(b"h\x01h\x01\x93q\x020");
    for _ in 0..n {
        p.raw(b"h\x02)R0");
    }
    p.raw(b"}").stop()
}

/// A legacy file whose storage-key list names one memoized `len`-byte key `n` times.
pub fn memo_legacy_keys(len: usize, n: usize) -> Vec<u8> {
    let mut keys = Pk::new();
    keys.mark().str(&"k".repeat(len)).raw(b"q\x00");
    keys.raw(&b"h\x00".repeat(n.saturating_sub(1)));
    keys.raw(b"l");
    legacy_file(&Pk::new().raw(b"}").stop(), &keys.stop(), &[])
}

/// A checkpoint whose weights dict names `n` tensors by one memoized `len`-byte string.
pub fn memo_weight_names(len: usize, n: usize) -> Vec<u8> {
    let mut extra = Pk::default();
    let t = T::half("0", Ckpt::numel(), 0, &[H]);
    extra.str("module").raw(b"}").mark();
    extra
        .str(&"k".repeat(len))
        .raw(b"q\x64")
        .tensor(&t)
        .raw(b"q\x65");
    for _ in 0..n {
        extra.raw(b"h\x64h\x65");
    }
    extra.raw(b"u");
    let mut c = Ckpt::with_extra(&extra.0);
    c.replace_module = true;
    c.bytes()
}

/// Issue 8.2: one memoized 1 MiB string reused 20,000 times (a 1-2 MB file) was copied at each
/// reuse, asking for ~20 GB. Each path is refused at the first use now (names are capped at 256
/// bytes), and names are shared, never copied, below the cap.
pub fn memo_long_strings() -> Vec<Case> {
    const MIB: usize = 1 << 20;
    const N: usize = 20_000;
    let too_long = |what: &str| {
        vec![
            what.to_string(),
            LONG_SHOWN.into(),
            "longer than 256 bytes".into(),
        ]
    };
    let mut out = Vec::new();
    for (what, pickle, needles) in [
        (
            "storage key in 20,000 persistent ids",
            memo_key_in_persistent_ids(MIB, N),
            too_long("storage key `kkk"),
        ),
        (
            "storage key in 20,000 tensor rebuilds",
            memo_rebuilds(MIB, 1, N),
            too_long("storage key `kkk"),
        ),
        (
            "module name in 20,000 STACK_GLOBALs",
            memo_name_in_stack_globals(MIB, N, true),
            too_long("module name `kkk"),
        ),
        (
            "class name in 20,000 STACK_GLOBALs",
            memo_name_in_stack_globals(MIB, N, false),
            too_long("class name `kkk"),
        ),
        (
            "global REDUCEd 20,000 times",
            memo_global_reduced(MIB, N),
            too_long("module name `kkk"),
        ),
    ] {
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        out.push(Case::pickle_refused(
            format!("a memoized 1 MiB {what}"),
            pickle,
            &needles,
        ));
    }
    // Names as long as allowed, reused: shared, so they cost nothing; a million rebuilds of a
    // 64-dimensional tensor are refused by the budget (their dimensions are copies).
    out.push(Case::pickle_refused(
        "a million rebuilds of one memoized 64-dimensional tensor",
        memo_rebuilds(256, 64, 1_000_000),
        &["values would take more than", "for its tensors"],
    ));
    out.push(Case::pickle_refused(
        "REDUCE of a memoized global with 256-byte names, 20,000 times",
        memo_global_reduced(256, N),
        &["no tensors found"],
    ));
    // A GLOBAL line longer than any module name.
    out.push(Case::pickle_refused(
        "a 300-byte GLOBAL module name",
        Pk::new().raw(b"c").raw(&[b'm'; 300]).raw(b"\nx\n").stop(),
        &["not terminated by a newline within 256 bytes"],
    ));
    out.push(
        Case::refused(
            "a memoized 1 MiB key 20,000 times in the legacy key list",
            memo_legacy_keys(MIB, N),
            &[
                "legacy storage key `kkk",
                LONG_SHOWN,
                "longer than 256 bytes",
            ],
        )
        .args(&["--heads", "1"]),
    );
    out.push(Case::refused(
        "one memoized 1 MiB tensor name for 20,000 weights",
        memo_weight_names(MIB, N),
        &[
            "tensor names of `module` add up to more bytes than the file holds",
            LONG_SHOWN,
        ],
    ));
    out
}

/// Small versions of the memo cases for the fuzz corpora (fuzz inputs are at most 64 KB):
/// (target, file name, bytes).
pub fn fuzz_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        (
            "pickle",
            "memo-long-key.pkl",
            memo_key_in_persistent_ids(300, 8),
        ),
        ("pickle", "memo-rebuilds.pkl", memo_rebuilds(256, 8, 200)),
        (
            "pickle",
            "memo-long-module.pkl",
            memo_name_in_stack_globals(300, 8, true),
        ),
        (
            "pickle",
            "memo-long-class.pkl",
            memo_name_in_stack_globals(300, 8, false),
        ),
        (
            "pickle",
            "memo-global-reduced.pkl",
            memo_global_reduced(200, 8),
        ),
        (
            "pickle",
            "memoize-flood.pkl",
            Pk::new()
                .raw(b"N")
                .ops(&[Op::Memoize; 4000])
                .raw(b"0}")
                .stop(),
        ),
        (
            "torch_zip",
            "memo-long-key.pt",
            torch_zip(&memo_key_in_persistent_ids(300, 8), &[]),
        ),
        (
            "torch_zip",
            "memo-weight-names.pt",
            memo_weight_names(300, 8),
        ),
        (
            "torch_legacy",
            "memo-long-keys.pt",
            memo_legacy_keys(300, 8),
        ),
    ]
}

pub fn value_floods() -> Vec<Case> {
    // 9 million one-byte DUPs appended to one list: ~0.5 GB of values from 9 MB of pickle
    // without the budget.
    let mut p = Pk::new();
    p.raw(b"]");
    for _ in 0..9 {
        p.raw(b"(K\x01").raw(&vec![b'2'; 1_000_000]).raw(b"e");
    }
    p.raw(b"0}");
    let dups = Case::pickle_refused(
        "9 million DUPs",
        p.stop(),
        &["values would take more than", "for its values"],
    );
    // 4 million one-byte MEMOIZEs: a memo entry each.
    let mut p = Pk::new();
    p.raw(b"N").ops(&vec![Op::Memoize; 4_000_000]).raw(b"0}");
    let memos = Case::pickle_refused(
        "4 million MEMOIZEs",
        p.stop(),
        &["values would take more than", "for its memo"],
    );
    // A million empty objects of one memoized class: REDUCE builds an object per 5 bytes.
    let mut p = Pk::new();
    p.global("argparse", "Namespace").raw(b"q\x00)q\x01]");
    for _ in 0..1_000_000 {
        p.raw(b"h\x00h\x01Ra");
    }
    p.raw(b"0}");
    let objects = Case::pickle_refused(
        "a million objects from one memoized class",
        p.stop(),
        &["values would take more than"],
    );
    // The legacy format's pickles share one budget: an object and a key list that each fit
    // what the file allows alone, but not together.
    let flood = |head: &[u8]| {
        let mut p = Pk::new();
        p.mark().raw(head).raw(&vec![b'2'; 600_000]).raw(b"l");
        p.stop()
    };
    let legacy = Case::refused(
        "two legacy pickles of 600,000 values each",
        legacy_file(&flood(b"K\x01"), &flood(b"X\x01\x00\x00\x000"), &[]),
        &["values would take more than"],
    );
    vec![dups, memos, objects, legacy]
}

pub fn length_fields() -> Vec<Case> {
    let big = (1u64 << 60).to_le_bytes();
    let mut out = Vec::new();
    for (op, name) in [
        (Op::BinUnicode8, "BINUNICODE8"),
        (Op::BinBytes8, "BINBYTES8"),
        (Op::ByteArray8, "BYTEARRAY8"),
    ] {
        let mut p = Pk::new();
        p.ops(&[op]).raw(&big).raw(b"xyz");
        out.push(Case::pickle_refused(
            format!("{name} claiming 2^60 bytes"),
            p.stop(),
            &["needs 1152921504606846976 more bytes", "truncated"],
        ));
    }
    out.push(Case::pickle_refused(
        "BINUNICODE claiming 4 GiB",
        Pk::new().raw(b"X\xff\xff\xff\xff").stop(),
        &["needs 4294967295 more bytes"],
    ));
    out.push(Case::pickle_refused(
        "LONG4 claiming 2 GiB",
        Pk::new().raw(b"\x8b\xff\xff\xff\x7f").stop(),
        &["needs 2147483647 more bytes"],
    ));
    let t = T::half("0", 1 << 60, 0, &[V, H]);
    out.push(Case::refused(
        "a storage claiming 2^60 elements",
        Ckpt::with_tensor("word_embeddings.weight", t).bytes(),
        &[
            "storage `0` should hold 1152921504606846976 elements",
            "entry has",
        ],
    ));
    out
}
