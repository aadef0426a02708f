//! The fuzz corpora: every stored input of every device target still decodes
//! (an input of an older format version fails here, so the format cannot
//! change unnoticed) and passes the harness's oracles; the seed files match
//! the seeds the harness defines (`LUNAVM_WRITE_SEEDS=1` rewrites them).

use std::path::{Path, PathBuf};

use lunavm::fuzz::device::{self, encode::encode, seeds::seeds, Target};

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpora")
}

#[test]
fn seed_files_match_the_harness_seeds() {
    let write = std::env::var_os("LUNAVM_WRITE_SEEDS").is_some();
    for (target, name) in Target::ALL {
        let dir = corpora().join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (seed, actions) in seeds(target) {
            let path = dir.join(format!("seed-{seed}"));
            let bytes = encode(&actions);
            if write {
                std::fs::write(&path, &bytes).unwrap();
            }
            let stored = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run with LUNAVM_WRITE_SEEDS=1 to write the seeds)",
                    path.display()
                )
            });
            assert_eq!(stored, bytes, "{} is stale", path.display());
        }
    }
}

#[test]
fn every_stored_input_decodes_and_passes_the_oracles() {
    let mut replayed = 0;
    for (target, name) in Target::ALL {
        let dir = corpora().join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}: every target has a corpus", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            device::run(target, &data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            replayed += 1;
        }
    }
    assert!(replayed >= Target::ALL.len(), "{replayed} inputs");
}
