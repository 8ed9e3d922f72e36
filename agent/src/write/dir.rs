//! The directory sink, for GitOps and the lab's control plane: one YAML
//! file per object with a stable name (`NAMESPACE.KIND.NAME.yaml`), written
//! by atomic rename so a reader never sees half a file. Files meshtune owns
//! carry the label `app.kubernetes.io/managed-by: meshtune`; only those are
//! ever replaced or removed. Other YAML files in the directory are read (a
//! user's object for a host wins over meshtune's) and never touched.

use crate::plan::Kind;
use crate::write::{is_meshtune_object, Autoscalers, Outcome, Sink, SinkError};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub struct DirSink {
    dir: PathBuf,
    /// Directories of other objects (a user's, say) read as the cluster
    /// would be, never written.
    also_read: Vec<PathBuf>,
    /// Whoever applies the Deployment files resizes the running replicas
    /// in place (the lab's control plane does) rather than rolling them.
    resize_in_place: bool,
}

impl DirSink {
    /// A sink writing into `dir`, created if missing.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(DirSink {
            dir: dir.to_path_buf(),
            also_read: Vec::new(),
            resize_in_place: false,
        })
    }

    /// Also reads the objects in `dirs` (never writing there), so a user's
    /// object kept there for a host wins over meshtune's as on a cluster.
    pub fn also_reading(mut self, dirs: Vec<PathBuf>) -> Self {
        self.also_read = dirs;
        self
    }

    /// The Deployment files are applied by resizing the running replicas in
    /// place (`resources.in_place_resize`), as the lab's control plane does.
    pub fn resizing_in_place(mut self, yes: bool) -> Self {
        self.resize_in_place = yes;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file an object is written to.
    pub fn file_name(kind: Kind, namespace: &str, name: &str) -> String {
        format!(
            "{namespace}.{}.{name}.yaml",
            kind.as_str().to_ascii_lowercase()
        )
    }

    fn path(&self, kind: Kind, namespace: &str, name: &str) -> PathBuf {
        self.dir.join(Self::file_name(kind, namespace, name))
    }

    /// Every object in the directory's YAML files (a file may hold several
    /// documents) and in the directories it also reads, with the file each
    /// came from. Files that do not parse are skipped: they are not
    /// meshtune's to judge.
    pub fn read_all(&self) -> std::io::Result<Vec<(PathBuf, Value)>> {
        let mut out = read_dir_objects(&self.dir)?;
        for d in &self.also_read {
            // A directory of the user's that is not there yet holds nothing.
            if d.is_dir() {
                out.extend(read_dir_objects(d)?);
            }
        }
        Ok(out)
    }

    fn owned_file(&self, path: &Path) -> Result<bool, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => match serde_yaml_ng::from_str::<Value>(&text) {
                Ok(v) => Ok(is_meshtune_object(&v)),
                Err(_) => Ok(false),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("absent".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// One YAML file of a directory: its objects (several documents separated
/// by `---`), when it was last written, and why it could not be read whole.
#[derive(Debug, Clone)]
pub struct YamlFile {
    pub path: PathBuf,
    pub modified: std::time::SystemTime,
    /// The documents read before any error.
    pub objects: Vec<Value>,
    pub error: Option<String>,
}

/// The YAML files directly in `dir` (hidden ones left out), in name order.
pub fn read_yaml_dir(dir: &Path) -> std::io::Result<Vec<YamlFile>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for path in entries {
        let (Ok(text), Ok(meta)) = (std::fs::read_to_string(&path), std::fs::metadata(&path))
        else {
            continue;
        };
        let mut file = YamlFile {
            path,
            modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            objects: Vec::new(),
            error: None,
        };
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            match serde::Deserialize::deserialize(doc) {
                Ok(Value::Null) => {}
                Ok(v) => file.objects.push(v),
                Err(e) => {
                    file.error = Some(e.to_string());
                    break;
                }
            }
        }
        out.push(file);
    }
    Ok(out)
}

/// The objects of the YAML files directly in `dir`; files that do not
/// parse are skipped, said in the log.
fn read_dir_objects(dir: &Path) -> std::io::Result<Vec<(PathBuf, Value)>> {
    let mut out = Vec::new();
    for f in read_yaml_dir(dir)? {
        if let Some(e) = &f.error {
            tracing::warn!("{}: not read: {e}", f.path.display());
        }
        out.extend(f.objects.into_iter().map(|o| (f.path.clone(), o)));
    }
    Ok(out)
}

impl Sink for DirSink {
    fn describe(&self) -> String {
        format!("dir:{}", self.dir.display())
    }

    fn can_take_over(&self) -> bool {
        false
    }

    fn resizes_in_place(&self, kind: Kind) -> bool {
        kind == Kind::Deployment && self.resize_in_place
    }

    async fn list(&self, kind: Kind, namespace: &str) -> Result<Vec<Value>, SinkError> {
        let all = self
            .read_all()
            .map_err(|e| SinkError::Unavailable(format!("{}: {e}", self.dir.display())))?;
        Ok(all
            .into_iter()
            .map(|(_, v)| v)
            .filter(|v| {
                v["kind"].as_str() == Some(kind.as_str())
                    && v["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
            })
            .collect())
    }

    async fn autoscalers(&self, namespace: &str) -> Result<Autoscalers, SinkError> {
        let all = self
            .read_all()
            .map_err(|e| SinkError::Unavailable(format!("{}: {e}", self.dir.display())))?;
        let of = |kind: &str| -> Vec<Value> {
            all.iter()
                .map(|(_, v)| v)
                .filter(|v| {
                    v["kind"].as_str() == Some(kind)
                        && v["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
                })
                .cloned()
                .collect()
        };
        Ok(Autoscalers {
            hpas: of("HorizontalPodAutoscaler"),
            vpas: of("VerticalPodAutoscaler"),
        })
    }

    async fn apply(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        object: &Value,
        _force: bool,
    ) -> Outcome {
        let path = self.path(kind, namespace, name);
        match self.owned_file(&path) {
            Ok(false) => {
                return Outcome::UserOwned(format!(
                    "{} exists and is not meshtune's",
                    path.display()
                ))
            }
            Ok(true) => {}
            Err(e) if e == "absent" => {}
            Err(e) => return Outcome::Failed(format!("{}: {e}", path.display())),
        }
        // The label marks the file as meshtune's (a Deployment's resources
        // body carries none: on a cluster the object stays the user's).
        let mut object = object.clone();
        if !is_meshtune_object(&object) {
            object["metadata"]["labels"][crate::plan::MANAGED_BY_LABEL] =
                crate::plan::FIELD_MANAGER.into();
        }
        let text = match serde_yaml_ng::to_string(&object) {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let tmp = self
            .dir
            .join(format!(".{}.tmp", Self::file_name(kind, namespace, name)));
        let written = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => Outcome::Applied,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Outcome::Failed(format!("{}: {e}", path.display()))
            }
        }
    }

    async fn remove(&self, kind: Kind, namespace: &str, name: &str) -> Outcome {
        let path = self.path(kind, namespace, name);
        match self.owned_file(&path) {
            Ok(true) => match std::fs::remove_file(&path) {
                Ok(()) => Outcome::Applied,
                Err(e) => Outcome::Failed(format!("{}: {e}", path.display())),
            },
            Ok(false) => Outcome::UserOwned(format!("{} is not meshtune's", path.display())),
            Err(e) if e == "absent" => Outcome::Applied,
            Err(e) => Outcome::Failed(format!("{}: {e}", path.display())),
        }
    }
}
