//! `diffattn manifest`: each model file's size and SHA-256 in a `manifest.json`, which the browser
//! package reads to check what it caches (a cached copy is trusted only while it hashes to the
//! manifest's value, so a server-side update or a corrupted cache entry is noticed).

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::ExitCode;

/// The file name the browser package looks for in a model directory.
pub const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "diffattn-manifest";

#[derive(clap::Args)]
pub struct ManifestArgs {
    /// A model directory (every file under it, dotfiles and manifest.json excepted), or one file
    /// (its entry is added to, or updated in, the manifest.json beside it).
    path: PathBuf,
    /// Compare the files with the existing manifest instead of writing it; exit code 1 on any
    /// difference.
    #[arg(long)]
    check: bool,
    /// Print the manifest to stdout instead of writing manifest.json.
    #[arg(long, conflicts_with = "check")]
    stdout: bool,
}

/// One file's entry: what a complete, intact copy of it measures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub size: u64,
    pub sha256: String,
}

/// The contents of manifest.json; `files` is keyed by the path relative to the manifest's
/// directory, with `/` separators (the form a URL relative to the model directory takes).
#[derive(Serialize, Deserialize, Debug)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub files: BTreeMap<String, Entry>,
}

/// Size and SHA-256 of one file, read in 1 MiB pieces (model shards can exceed memory).
pub fn hash_file(path: &Path) -> Result<Entry> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Entry { size, sha256 })
}

/// Every file under `dir` as (relative key, path), sorted; dot entries are skipped (editor and VCS
/// files are no part of a model), and so is the top-level manifest itself.
fn files_under(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = vec![];
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, d)) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("{}", d.display()))? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                bail!(
                    "{}: file names must be UTF-8 to be named in a manifest",
                    e.path().display()
                );
            };
            if name.starts_with('.') || (prefix.is_empty() && name == MANIFEST) {
                continue;
            }
            let key = format!("{prefix}{name}");
            let ty = e.file_type()?;
            if ty.is_dir() {
                stack.push((format!("{key}/"), e.path()));
            } else if std::fs::metadata(e.path())?.is_file() {
                out.push((key, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a diffattn manifest", path.display()))?;
    if m.format != FORMAT || m.version != 1 {
        bail!(
            "{}: format {:?} version {} (this diffattn writes {FORMAT:?} version 1)",
            path.display(),
            m.format,
            m.version
        );
    }
    Ok(m)
}

pub fn run(args: &ManifestArgs) -> Result<()> {
    let meta = std::fs::metadata(&args.path).map_err(|e| {
        ExitCode(
            2,
            anyhow!(
                "{}: {e} (give a model directory or a file)",
                args.path.display()
            ),
        )
    })?;
    // (directory holding manifest.json, files to hash, whether other entries are kept)
    let (dir, files, single) = if meta.is_dir() {
        (args.path.clone(), files_under(&args.path)?, false)
    } else {
        let name = args
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{}: not a UTF-8 file name", args.path.display()))?;
        if name == MANIFEST {
            return Err(ExitCode(
                2,
                anyhow!(
                    "{}: a manifest does not list itself; give the model directory",
                    args.path.display()
                ),
            )
            .into());
        }
        let parent = args
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        (
            parent.to_path_buf(),
            vec![(name.to_string(), args.path.clone())],
            true,
        )
    };
    if files.is_empty() {
        return Err(ExitCode(2, anyhow!("{}: no files to list", args.path.display())).into());
    }
    let out_path = dir.join(MANIFEST);

    let mut hashed = BTreeMap::new();
    for (key, path) in &files {
        hashed.insert(key.clone(), hash_file(path)?);
    }

    if args.check {
        let m = read_manifest(&out_path)?;
        let mut problems = vec![];
        for (key, got) in &hashed {
            match m.files.get(key) {
                None => problems.push(format!("{key}: not in the manifest")),
                Some(want) if want != got => problems.push(format!(
                    "{key}: manifest says {} bytes, sha256 {}; the file has {} bytes, sha256 {}",
                    want.size, want.sha256, got.size, got.sha256
                )),
                Some(_) => {}
            }
        }
        if !single {
            for key in m.files.keys().filter(|k| !hashed.contains_key(*k)) {
                problems.push(format!("{key}: in the manifest but not in the directory"));
            }
        }
        if !problems.is_empty() {
            bail!(
                "{} is out of date (rerun `diffattn manifest {}`):\n  {}",
                out_path.display(),
                args.path.display(),
                problems.join("\n  ")
            );
        }
        println!("{}: {} files match", out_path.display(), hashed.len());
        return Ok(());
    }

    let mut manifest = if single && out_path.exists() {
        read_manifest(&out_path)?
    } else {
        Manifest {
            format: FORMAT.into(),
            version: 1,
            files: BTreeMap::new(),
        }
    };
    manifest.files.extend(hashed.clone());
    let text = serde_json::to_string_pretty(&manifest)? + "\n";
    if args.stdout {
        print!("{text}");
        return Ok(());
    }
    std::fs::write(&out_path, text).with_context(|| format!("writing {}", out_path.display()))?;
    for (key, e) in &hashed {
        println!("{}  {:>12}  {key}", e.sha256, e.size);
    }
    let total: u64 = hashed.values().map(|e| e.size).sum();
    println!(
        "wrote {}: {} files, {total} bytes",
        out_path.display(),
        hashed.len()
    );
    Ok(())
}
