//! The code cache's file format and store: round trip, damaged, truncated and stale files
//! ignored, a block with other bytes a miss. (`jit/tests/code_cache.rs` runs real compiled
//! code from a cache; `tests/code_cache.rs` replays a trace twice through one.)

use super::file::{parse, serialize};
use super::*;
use crate::compile::reloc::{KrrReloc, Sym};

const ID: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;

fn entry(material: &[u8], used: u64) -> Entry {
    Entry {
        material: material.to_vec(),
        code: StoredCode {
            code: (0..64u8).map(|i| i ^ material[0]).collect(),
            align: 16,
            relocs: vec![
                KrrReloc {
                    offset: 2,
                    sym: Sym::Shim(3),
                    addend: 0,
                },
                KrrReloc {
                    offset: 20,
                    sym: Sym::JumpCache,
                    addend: 32 * 77,
                },
                KrrReloc {
                    offset: 40,
                    sym: Sym::Insn(5),
                    addend: -8,
                },
            ],
        },
        used,
    }
}

fn entries() -> HashMap<u128, Entry> {
    [b"block one".as_slice(), b"block two", b"third block"]
        .iter()
        .enumerate()
        .map(|(i, m)| (key_of(m), entry(m, 1000 + i as u64)))
        .collect()
}

#[test]
fn symbols_round_trip() {
    for s in [
        Sym::Shim(0),
        Sym::Shim(6),
        Sym::JumpCache,
        Sym::Slot(0),
        Sym::Slot(1),
        Sym::Insn(0),
        Sym::Insn(63),
        Sym::Pure(10),
    ] {
        assert_eq!(Sym::from_index(s.index()), Some(s));
    }
    assert_eq!(Sym::from_index(0), None);
    assert_eq!(Sym::from_index(0x2000_0001), None);
}

#[test]
fn file_round_trip() {
    let e = entries();
    let bytes = serialize(ID, &e, MAX_BYTES);
    let back = parse(&bytes, ID).unwrap();
    assert_eq!(back.len(), e.len());
    for (k, v) in &e {
        let b = &back[k];
        assert_eq!(b.material, v.material);
        assert_eq!(b.code, v.code);
        assert_eq!(b.used, v.used);
    }
}

#[test]
fn damaged_truncated_and_foreign_files_are_refused() {
    let bytes = serialize(ID, &entries(), MAX_BYTES);
    // Any single flipped byte (header, lengths, checksums, bodies) makes the file unusable.
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        assert!(parse(&bad, ID).is_err(), "byte {i} flipped");
    }
    for n in 0..bytes.len() {
        assert!(parse(&bytes[..n], ID).is_err(), "truncated to {n}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(parse(&longer, ID).is_err());
    // Another build or host: the id differs.
    assert!(parse(&bytes, ID ^ 1)
        .unwrap_err()
        .contains("another krr build"));
    assert!(parse(b"garbage", ID).is_err());
}

#[test]
fn size_bound_keeps_the_most_recently_used() {
    let e = entries();
    let whole = serialize(ID, &e, MAX_BYTES).len() as u64;
    let back = parse(&serialize(ID, &e, whole - 1), ID).unwrap();
    assert_eq!(back.len(), 2);
    assert!(!back.contains_key(&key_of(b"block one")), "the oldest went");
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("krr-ccache-unit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn store_saves_loads_and_checks_the_whole_key() {
    let dir = temp_dir("store");
    let path = dir.join(format!("blocks-{:016x}.krrcc", ID as u64));
    let mut s = Store {
        path: path.clone(),
        id: ID,
        entries: HashMap::new(),
        added: 0,
        hits: 0,
    };
    let e = entry(b"guest bytes A", 5);
    s.insert(e.material.clone(), e.code.clone());
    s.save();
    let loaded = file::read(&path, ID);
    let mut t = Store {
        path: path.clone(),
        id: ID,
        entries: loaded,
        added: 0,
        hits: 0,
    };
    assert_eq!(t.get(b"guest bytes A"), Some(&e.code));
    // Other guest bytes: a miss, also when the hash is forced to collide.
    assert_eq!(t.get(b"guest bytes B"), None);
    let k = key_of(b"guest bytes A");
    t.entries.get_mut(&k).unwrap().material = b"guest bytes C".to_vec();
    assert_eq!(t.get(b"guest bytes A"), None);
    // A damaged file reads as empty (and is rewritten by the next save).
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(file::read(&path, ID).is_empty());
    // A stale file (another build's id) too.
    assert!(file::read(&path, ID ^ 1).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn other_files_go_oldest_first_and_dead_writers_temporaries_go() {
    let dir = temp_dir("room");
    std::fs::create_dir_all(&dir).unwrap();
    let now = std::time::SystemTime::now();
    let make = |name: &str, len: usize, age_s: u64| {
        let p = dir.join(name);
        std::fs::write(&p, vec![0u8; len]).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(now - std::time::Duration::from_secs(age_s))
            .unwrap();
        p
    };
    let keep = make("blocks-0000000000000001.krrcc", 100, 9000);
    let oldest = make("blocks-0000000000000002.krrcc", 100, 5000);
    let newer = make("blocks-0000000000000003.krrcc", 100, 10);
    let unrelated = make("notes.txt", 1000, 9000);
    let dead_tmp = make(".blocks-0000000000000002.krrcc.999.tmp", 10, 7200);
    let live_tmp = make(".blocks-0000000000000003.krrcc.998.tmp", 10, 5);
    file::make_room(&dir, &keep, 150);
    assert!(keep.exists() && newer.exists() && unrelated.exists() && live_tmp.exists());
    assert!(!oldest.exists() && !dead_tmp.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
