//! Loading components: compile, check the contract version and the
//! imports, link, initialise, and order the chain.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasmtime::component::Component;

use super::bindings::PluginPre;
use super::cache::{self, Lookup};
use super::engine::{Digest, MAX_COMPILED, WASI_INTERFACES, WASI_VERSION_PREFIX};
use super::shipped::Shipped;
use super::{LoadError, LoadedPlugin, PluginHost, PluginSet, PluginSettings};

/// Where a plugin's code comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A `*.wasm` file.
    File(PathBuf),
    /// A plugin shipped inside the binary.
    Shipped(&'static Shipped),
}

impl Source {
    /// Ties in `order` break on this: the file name, or the shipped name.
    fn sort_key(&self) -> String {
        match self {
            Source::File(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            Source::Shipped(shipped) => shipped.name.to_owned(),
        }
    }
}

/// The package every plugin is built against.
const PACKAGE: &str = "moat:plugin";
/// This host's version of [`PACKAGE`].
pub(crate) const PACKAGE_VERSION: &str = "0.1.0";

impl PluginHost {
    /// Loads every `*.wasm` component in `dir` with its optional sidecar
    /// `NAME.toml`, ordered by the sidecar's `order` then by file name.
    ///
    /// # Errors
    /// The first plugin that fails to load fails the whole set: a policy
    /// with a plugin missing must never run in its place.
    pub fn load_dir(&self, dir: &Path) -> Result<PluginSet, LoadError> {
        self.load_sources(components_in(dir)?)
    }

    /// Loads the given components with the given settings, ordered by
    /// `order` then by file name.
    ///
    /// # Errors
    /// As [`PluginHost::load_dir`].
    pub fn load(&self, specs: Vec<(PathBuf, PluginSettings)>) -> Result<PluginSet, LoadError> {
        self.load_sources(specs.into_iter().map(|(path, settings)| (Source::File(path), settings)).collect())
    }

    /// Loads components from files and from the binary (shipped plugins)
    /// together, ordered by `order` then by name.
    ///
    /// # Errors
    /// As [`PluginHost::load_dir`].
    pub fn load_sources(&self, mut specs: Vec<(Source, PluginSettings)>) -> Result<PluginSet, LoadError> {
        specs.sort_by(|(a, sa), (b, sb)| sa.order.cmp(&sb.order).then_with(|| a.sort_key().cmp(&b.sort_key())));
        let plugins = specs
            .into_iter()
            .map(|(source, settings)| match source {
                Source::File(path) => self.load_one(path, settings),
                Source::Shipped(shipped) => self.load_shipped(shipped, settings),
            })
            .map(|loaded| loaded.map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PluginSet::new(plugins))
    }

    /// Loads a plugin embedded in the binary; errors name it
    /// `shipped:NAME`.
    ///
    /// # Errors
    /// As [`PluginHost::load_one`].
    pub fn load_shipped(&self, shipped: &'static Shipped, settings: PluginSettings) -> Result<LoadedPlugin, LoadError> {
        let path = PathBuf::from(format!("shipped:{}", shipped.name));
        let component = self.compile(shipped.name, shipped.wasm);
        self.load_component(shipped.name.into(), path, component, settings)
    }

    /// Loads one component.
    ///
    /// # Errors
    /// See [`LoadError`]: unreadable or invalid component, another contract
    /// version, an import the host does not offer, missing exports, or an
    /// `init` that refuses its config.
    pub fn load_one(&self, path: PathBuf, settings: PluginSettings) -> Result<LoadedPlugin, LoadError> {
        let name: Arc<str> = path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default().into();
        let io = |e: std::io::Error| LoadError::Io { path: path.clone(), message: e.to_string() };
        // An unchanged component (a reload) is found by its digest alone,
        // read in small pieces: reading a large one whole on every reload
        // left its size behind in the allocator each time.
        let digest = digest_file(&path).map_err(io)?;
        let cached = self.compiled().lock().get(&digest).cloned();
        let component = match cached {
            Some(component) => {
                self.counts().memory.fetch_add(1, Ordering::Relaxed);
                Ok((component, digest))
            }
            None => self.compile(&name, &std::fs::read(&path).map_err(io)?),
        };
        self.load_component(name, path, component, settings)
    }

    /// What the component at `path` declares before anything runs: the
    /// `moat:plugin` version it targets, its imports and its exports. Only
    /// compiles (reusing this host's cache, so a following
    /// [`PluginHost::load_one`] does not compile again); the contract is not
    /// checked, so a tool can show the imports of a component the broker
    /// would refuse.
    ///
    /// # Errors
    /// [`LoadError::Io`] or [`LoadError::Invalid`], naming the file.
    pub fn inspect(&self, path: &Path) -> Result<ComponentInfo, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Io { path: path.to_owned(), message: e.to_string() })?;
        let name = path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default();
        let (component, _) = self
            .compile(&name, &bytes)
            .map_err(|e| LoadError::Invalid { path: path.to_owned(), message: format!("{e:#}") })?;
        let ty = component.component_type();
        let engine = self.engine();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        let contract_version = imports.iter().chain(&exports).find_map(|n| contract_version(n)).map(str::to_owned);
        Ok(ComponentInfo { contract_version, imports, exports })
    }

    /// Checks, links and initialises one compiled component; `path` names
    /// it in errors and logs.
    fn load_component(
        &self,
        name: Arc<str>,
        path: PathBuf,
        compiled: wasmtime::Result<(Component, Digest)>,
        settings: PluginSettings,
    ) -> Result<LoadedPlugin, LoadError> {
        let (component, digest) =
            compiled.map_err(|e| LoadError::Invalid { path: path.clone(), message: format!("{e:#}") })?;
        self.check_contract(&path, &component)?;
        let pre = self
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link { path: path.clone(), message: format!("{e:#}") })?;
        let pre = PluginPre::new(pre).map_err(|e| LoadError::Link { path: path.clone(), message: format!("{e:#}") })?;
        LoadedPlugin::start(name, path.clone(), digest, settings, self.engine().clone(), pre)
            .map_err(|message| LoadError::Init { path, message })
    }

    /// Compiles `bytes`, the component of plugin `name`, or reuses the
    /// component compiled from the same bytes before: by this host (memory),
    /// or by any process of this user with the same engine settings (the
    /// disk cache). The lock is not held while compiling, so two loads may
    /// compile the same bytes at once; the second result simply wins.
    fn compile(&self, name: &str, bytes: &[u8]) -> wasmtime::Result<(Component, Digest)> {
        let digest = sha256(bytes);
        if let Some(component) = self.compiled().lock().get(&digest) {
            self.counts().memory.fetch_add(1, Ordering::Relaxed);
            return Ok((component.clone(), digest));
        }
        let found = match self.disk().map(|disk| disk.load(self.engine(), bytes)) {
            Some(Lookup::Found(component)) => Some(component),
            Some(Lookup::Refused) => {
                self.counts().refused.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(Lookup::Missing) | None => None,
        };
        let component = match found {
            Some(component) => {
                self.counts().disk.fetch_add(1, Ordering::Relaxed);
                component
            }
            None => {
                let component = cache::compile(self.engine(), name, bytes)?;
                self.counts().compiled.fetch_add(1, Ordering::Relaxed);
                if let Some(disk) = self.disk() {
                    disk.store(bytes, &component);
                }
                component
            }
        };
        let mut compiled = self.compiled().lock();
        if compiled.len() >= MAX_COMPILED {
            compiled.clear();
        }
        compiled.insert(digest, component.clone());
        Ok((component, digest))
    }

    /// Forgets the compiled components `set` does not use. The broker calls
    /// this once a reloaded set is in force, so the code of plugins that
    /// were replaced or removed (tens of MB for a CPython component) is not
    /// kept for a reload that may never bring them back; the disk cache
    /// still has them.
    pub fn retain_compiled(&self, set: &PluginSet) {
        let used: Vec<&Digest> = set.plugins().iter().map(|p| p.digest()).collect();
        self.compiled().lock().retain(|digest, _| used.contains(&digest));
    }

    /// Refuses components built for another version of `moat:plugin`, and
    /// components importing anything but the host interface and the WASI
    /// interfaces linked with nothing behind them.
    fn check_contract(&self, path: &Path, component: &Component) -> Result<(), LoadError> {
        let ty = component.component_type();
        let engine = self.engine();
        let names = ty.imports(engine).map(|(n, _)| n).chain(ty.exports(engine).map(|(n, _)| n));
        for name in names {
            if let Some(version) = contract_version(name)
                && !compatible(version, PACKAGE_VERSION)
            {
                return Err(LoadError::Version {
                    path: path.to_owned(),
                    found: version.to_owned(),
                    supported: PACKAGE_VERSION.to_owned(),
                });
            }
        }
        for (import, _) in ty.imports(engine) {
            if !import_allowed(import) {
                return Err(LoadError::ForbiddenImport { path: path.to_owned(), import: import.to_owned() });
            }
        }
        Ok(())
    }
}

/// The SHA-256 of `bytes`.
fn sha256(bytes: &[u8]) -> Digest {
    let mut digest = [0; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    digest
}

/// The SHA-256 of the file at `path`, read 64 KiB at a time.
fn digest_file(path: &Path) -> std::io::Result<Digest> {
    let mut file = std::fs::File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => context.update(&buffer[..n]),
        }
    }
    let mut digest = [0; 32];
    digest.copy_from_slice(context.finish().as_ref());
    Ok(digest)
}

/// What a component declares about itself: see [`PluginHost::inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// The `moat:plugin` version its imports and exports name, if any.
    pub contract_version: Option<String>,
    /// Its imports (interface names with versions), in declaration order.
    pub imports: Vec<String>,
    /// Its exports, in declaration order.
    pub exports: Vec<String>,
}

impl ComponentInfo {
    /// Whether the broker offers `import` to plugins (its own `host` and
    /// `types` interfaces and the capability-free WASI interfaces).
    pub fn import_allowed(import: &str) -> bool {
        import_allowed(import)
    }
}

/// The version of `moat:plugin` an import or export name refers to.
fn contract_version(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    rest.split_once('@').map(|(_, v)| v)
}

/// Semver compatibility: the same major version, or for 0.x the same minor.
fn compatible(found: &str, ours: &str) -> bool {
    let key = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, if major == 0 { minor } else { 0 }))
    };
    matches!((key(found), key(ours)), (Some(a), Some(b)) if a == b)
}

/// Whether the host offers `import`: its own interfaces, or one of the
/// capability-free WASI 0.2 interfaces.
fn import_allowed(import: &str) -> bool {
    if let Some(v) = contract_version(import) {
        // `types` holds only type definitions the exports use; `host` is the
        // host's own functions.
        let offered = import.starts_with("moat:plugin/host@") || import.starts_with("moat:plugin/types@");
        return offered && compatible(v, PACKAGE_VERSION);
    }
    match import.split_once('@') {
        Some((interface, version)) => version.starts_with(WASI_VERSION_PREFIX) && WASI_INTERFACES.contains(&interface),
        None => false,
    }
}

/// The components of `dir` (its `*.wasm` files), each with the settings of
/// its sidecar.
///
/// # Errors
/// An unreadable directory or a sidecar that does not parse.
pub fn components_in(dir: &Path) -> Result<Vec<(Source, PluginSettings)>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::Io { path: dir.to_owned(), message: e.to_string() })?;
    let mut specs = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| LoadError::Io { path: dir.to_owned(), message: e.to_string() })?.path();
        if path.extension().is_some_and(|ext| ext == "wasm") && path.is_file() {
            let settings = PluginSettings::for_component(&path)?;
            specs.push((Source::File(path), settings));
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(contract_version("moat:plugin/authz@1.0.0"), Some("1.0.0"));
        assert_eq!(contract_version("wasi:io/streams@0.2.0"), None);
        assert!(compatible("0.1.3", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.0.0", "0.1.0"));
        assert!(!compatible("garbage", "0.1.0"));
    }

    #[test]
    fn imports() {
        assert!(import_allowed("moat:plugin/host@0.1.0"));
        assert!(import_allowed("moat:plugin/types@0.1.0"));
        assert!(!import_allowed("moat:plugin/authz@0.1.0"));
        assert!(import_allowed("wasi:cli/environment@0.2.6"));
        assert!(import_allowed("wasi:sockets/tcp@0.2.6"), "linked, with no network behind it");
        assert!(!import_allowed("wasi:http/outgoing-handler@0.2.6"));
        assert!(!import_allowed("wasi:cli/environment@0.3.0"));
        assert!(!import_allowed("evil"));
    }
}
