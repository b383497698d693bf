//! Plugin versions: validation before acceptance, and a content-addressed store on
//! disk that survives restarts.
//!
//! An upload is refused, with a message saying exactly why, if it is empty or too
//! large, not WebAssembly, a core module rather than a component, malformed, built
//! for another version of the `weir:processor` world, missing an export, not
//! type-correct against the world, or not compilable. An accepted upload is stored
//! as `<sha256>.wasm` with its precompiled artifact `<sha256>.cwasm` and a line in
//! `index.json`; uploading the same bytes again returns the same version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::runtime::{Limits, LoadError, Plugin, Runtime, Sandbox, clip, sha256_hex};

/// Why an upload was refused, or the registry failed.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// Nothing was uploaded.
    #[error("the upload is empty")]
    Empty,
    /// Above the size limit.
    #[error("the upload is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not WebAssembly at all.
    #[error("not WebAssembly: the file does not start with the \\0asm magic number")]
    NotWasm,
    /// A core module, not a component.
    #[error("a core WebAssembly module, not a component: build the plugin with --target wasm32-wasip2")]
    CoreModule,
    /// Structurally invalid.
    #[error("invalid WebAssembly component: {0}")]
    Invalid(String),
    /// Loads but does not fit the world, or does not compile.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A plugin name that cannot be used.
    #[error("invalid plugin name {:?}: use 1-64 ASCII letters, digits, '.', '_' or '-'", clip(.0, 80))]
    BadName(String),
    /// No such version.
    #[error("no plugin version {:?}", clip(.0, 80))]
    UnknownVersion(String),
    /// A stored artifact does not match its recorded hash.
    #[error("stored artifact {0} is corrupt (hash mismatch); upload the plugin again")]
    Corrupt(String),
    /// Disk I/O.
    #[error("plugin registry at {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The index could not be read or written.
    #[error("plugin registry index: {0}")]
    Index(String),
}

/// One accepted plugin version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// SHA-256 of the component, hex: the version's identity.
    pub id: String,
    /// The name it was uploaded under.
    pub name: String,
    /// What the plugin calls itself.
    pub plugin_name: String,
    /// The plugin's own version string.
    pub plugin_version: String,
    /// Window size and advance in ms, if the topology has windows.
    #[serde(default)]
    pub windowing: Option<(i64, i64)>,
    /// Accumulator encoding version.
    pub state_schema: u32,
    /// Component size in bytes.
    pub size: usize,
    /// SHA-256 of the precompiled artifact, hex.
    pub artifact_sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// Versions in upload order.
    versions: Vec<Version>,
}

/// The plugin store of one host.
pub struct Registry {
    dir: PathBuf,
    runtime: Runtime,
    max_bytes: usize,
    /// What an upload's `describe` runs under (and what it may declare).
    limits: Limits,
    index: Index,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { path: path.display().to_string(), source }
}

/// Checks the bytes before anything is compiled: size, magic, kind, structure.
pub fn check_bytes(bytes: &[u8], max_bytes: usize) -> Result<(), RegistryError> {
    if bytes.is_empty() {
        return Err(RegistryError::Empty);
    }
    if bytes.len() > max_bytes {
        return Err(RegistryError::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(RegistryError::NotWasm);
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(RegistryError::CoreModule);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(RegistryError::Invalid("unknown WebAssembly version or layer".into()));
    }
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| RegistryError::Invalid(e.to_string()))?;
    Ok(())
}

impl Registry {
    /// Opens (or creates) the registry in `dir`; uploads larger than `max_bytes`
    /// are refused.
    pub fn open(dir: &Path, runtime: Runtime, max_bytes: usize) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let index_path = dir.join("index.json");
        let index = match std::fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Index(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(io(&index_path)(e)),
        };
        Ok(Self { dir: dir.to_path_buf(), runtime, max_bytes, limits: Limits::default(), index })
    }

    /// Validates uploads under `limits` (the host's) instead of the defaults: a
    /// `describe` that does not return is stopped at its CPU budget, and the
    /// windows an upload declares are held to `max_windows_per_record`.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Validates, compiles and stores an upload under `name`.
    pub fn upload(&mut self, name: &str, bytes: &[u8]) -> Result<Version, RegistryError> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !name_ok {
            return Err(RegistryError::BadName(name.to_owned()));
        }
        check_bytes(bytes, self.max_bytes)?;
        let plugin = self.runtime.load(bytes, Sandbox { limits: self.limits, ..Sandbox::default() })?;
        let id = sha256_hex(bytes);
        if let Some(existing) = self.index.versions.iter().find(|v| v.id == id && v.name == name) {
            return Ok(existing.clone());
        }
        let artifact = self.runtime.precompile(bytes)?;
        self.write(&format!("{id}.wasm"), bytes)?;
        self.write(&format!("{id}.cwasm"), &artifact)?;
        let info = plugin.info();
        let version = Version {
            id,
            name: name.to_owned(),
            plugin_name: info.name.clone(),
            plugin_version: info.version.clone(),
            windowing: info.shape.aggregations().find_map(|(_, a)| a.windowing).map(|w| (w.size_ms(), w.advance_ms())),
            state_schema: info.state_schema,
            size: bytes.len(),
            artifact_sha256: sha256_hex(&artifact),
        };
        self.index.versions.push(version.clone());
        self.save_index()?;
        Ok(version)
    }

    /// Every version, in upload order.
    pub fn versions(&self) -> &[Version] {
        &self.index.versions
    }

    /// Versions grouped by upload name.
    pub fn by_name(&self) -> BTreeMap<&str, Vec<&Version>> {
        let mut map: BTreeMap<&str, Vec<&Version>> = BTreeMap::new();
        for v in &self.index.versions {
            map.entry(v.name.as_str()).or_default().push(v);
        }
        map
    }

    /// The stored version `id` (or an unambiguous prefix of at least 8 characters).
    pub fn find(&self, id: &str) -> Result<&Version, RegistryError> {
        self.index
            .versions
            .iter()
            .find(|v| v.id == id || (id.len() >= 8 && v.id.starts_with(id)))
            .ok_or_else(|| RegistryError::UnknownVersion(id.to_owned()))
    }

    /// Where the component of a stored version is kept.
    pub fn component_path(&self, version: &Version) -> PathBuf {
        self.dir.join(format!("{}.wasm", version.id))
    }

    /// Loads a stored version from its precompiled artifact.
    pub fn load(&self, id: &str, sandbox: Sandbox) -> Result<Plugin, RegistryError> {
        let version = self.find(id)?;
        let path = self.dir.join(format!("{}.cwasm", version.id));
        let artifact = std::fs::read(&path).map_err(io(&path))?;
        if sha256_hex(&artifact) != version.artifact_sha256 {
            return Err(RegistryError::Corrupt(path.display().to_string()));
        }
        Ok(self.runtime.load_precompiled(&artifact, sandbox, &version.id)?)
    }

    fn write(&self, file: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let path = self.dir.join(file);
        let tmp = self.dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn save_index(&self) -> Result<(), RegistryError> {
        let json = serde_json::to_vec_pretty(&self.index).map_err(|e| RegistryError::Index(e.to_string()))?;
        self.write("index.json", &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock_stats() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release/stock_stats.wasm");
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from);
        let path = target.map(|t| t.join("wasm32-wasip2/release/stock_stats.wasm")).unwrap_or(path);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (build the plugins first)", path.display()))
    }

    fn registry(dir: &Path) -> Registry {
        Registry::open(dir, Runtime::new().unwrap(), 4 << 20).unwrap()
    }

    #[test]
    fn accepted_versions_are_content_addressed_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = stock_stats();
        let id = {
            let mut reg = registry(dir.path());
            let v = reg.upload("stock-stats", &bytes).unwrap();
            assert_eq!(v.id, sha256_hex(&bytes));
            assert_eq!((v.plugin_name.as_str(), v.windowing, v.state_schema), ("stock-stats", Some((5000, 1000)), 1));
            assert_eq!(reg.upload("stock-stats", &bytes).unwrap(), v, "same bytes, same version");
            assert_eq!(reg.versions().len(), 1);
            v.id
        };
        let reg = registry(dir.path());
        assert_eq!(reg.versions().len(), 1);
        let plugin = reg.load(&id[..12], Sandbox::default()).unwrap();
        assert_eq!(plugin.info().name, "stock-stats");
    }

    #[test]
    fn a_tampered_artifact_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = registry(dir.path());
        let v = reg.upload("s", &stock_stats()).unwrap();
        let path = dir.path().join(format!("{}.cwasm", v.id));
        let mut artifact = std::fs::read(&path).unwrap();
        let last = artifact.len() - 1;
        artifact[last] ^= 0xff;
        std::fs::write(&path, artifact).unwrap();
        assert!(matches!(reg.load(&v.id, Sandbox::default()), Err(RegistryError::Corrupt(_))));
    }

    fn refusal(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = registry(dir.path());
        let err = reg.upload("p", bytes).unwrap_err().to_string();
        assert!(reg.versions().is_empty(), "a refused upload changes nothing");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written for a refused upload");
        err
    }

    #[test]
    fn bad_uploads_are_refused_with_the_reason() {
        assert_eq!(refusal(b""), "the upload is empty");
        assert!(refusal(&[7u8; 100]).starts_with("not WebAssembly"));
        assert!(refusal(&vec![0u8; 5 << 20]).contains("the limit is 4194304 bytes"));
        // The smallest core module: magic + version 1.
        assert!(refusal(b"\0asm\x01\0\0\0").starts_with("a core WebAssembly module, not a component"));
        // A component header followed by garbage.
        assert!(refusal(b"\0asm\x0d\0\x01\0\xff\xff").starts_with("invalid WebAssembly component"));
        // The empty component: valid, but implements nothing of the world.
        assert!(
            refusal(b"\0asm\x0d\0\x01\0")
                .contains("does not export `describe`, `run`, `aggregate`, `migrate` (it exports nothing)")
        );
        let mut reg = registry(tempfile::tempdir().unwrap().path());
        assert!(matches!(reg.upload("bad name!", &stock_stats()), Err(RegistryError::BadName(_))));
        // A huge name is not echoed back whole.
        let long = "n".repeat(10_000);
        let refusal = reg.upload(&long, &stock_stats()).unwrap_err().to_string();
        assert!(refusal.len() < 300 && refusal.contains("(10000 bytes)"), "{refusal}");
    }
}
