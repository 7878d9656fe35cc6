//! `halo plugin …`: inspect, sign, verify and list protocol components.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use halo_engine::{EngineConfig, Runtime};
use halo_signing::{SignaturePolicy, SignatureStatus, SigningKey, TrustedKeys};

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// Generate an ed25519 signing key pair (secret: PKCS#8 PEM, mode 0600; public: SPKI PEM).
    Keygen {
        #[arg(long)]
        secret: PathBuf,
        #[arg(long)]
        public: PathBuf,
    },
    /// Sign a component: writes `<FILE>.sig` beside it.
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Verify a component's signature against trusted public keys (a directory of *.pem/*.pub).
    Verify {
        file: PathBuf,
        #[arg(long)]
        trusted_keys: PathBuf,
    },
    /// Print protocol, version, WIT package, imports/exports, digest, stage table, signature status.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
    },
    /// Load a plugin directory as a duchy would and list what it offers.
    List {
        dir: PathBuf,
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
        #[arg(long)]
        require_signatures: bool,
    },
}

fn trusted(dir: Option<&Path>) -> Result<TrustedKeys> {
    match dir {
        Some(d) => TrustedKeys::load_dir(d)
            .with_context(|| format!("loading trusted keys from {}", d.display())),
        None => Ok(TrustedKeys::default()),
    }
}

fn describe_status(s: &SignatureStatus) -> String {
    match s {
        SignatureStatus::Unsigned => "unsigned".into(),
        SignatureStatus::Valid { key_id } => format!("valid (key {key_id})"),
        SignatureStatus::UntrustedKey { key_id } => format!("signed by untrusted key {key_id}"),
        SignatureStatus::Invalid { reason } => format!("INVALID: {reason}"),
    }
}

pub fn run(cmd: PluginCommand) -> Result<()> {
    match cmd {
        PluginCommand::Keygen { secret, public } => {
            let key = SigningKey::generate();
            key.write(&secret, &public)?;
            println!(
                "key {} written: secret {}, public {}",
                key.public().key_id(),
                secret.display(),
                public.display()
            );
            Ok(())
        }
        PluginCommand::Sign { file, key } => {
            let key = SigningKey::read(&key)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let sig = halo_signing::sign(&key, &bytes);
            let path = halo_signing::signature_path(&file);
            sig.write(&path)?;
            println!(
                "signed {} ({}) with key {}: {}",
                file.display(),
                sig.digest,
                sig.key_id,
                path.display()
            );
            Ok(())
        }
        PluginCommand::Verify { file, trusted_keys } => {
            let keys = trusted(Some(&trusted_keys))?;
            let status = halo_signing::check_file(&file, &keys)?;
            println!("{}: {}", file.display(), describe_status(&status));
            match status {
                SignatureStatus::Valid { .. } => Ok(()),
                _ => bail!("{} is not validly signed by a trusted key", file.display()),
            }
        }
        PluginCommand::Inspect { file, trusted_keys } => {
            let keys = trusted(trusted_keys.as_deref())?;
            let runtime = Runtime::new(EngineConfig::default())?;
            let plugin = runtime
                .load_file(&file)
                .with_context(|| format!("loading {}", file.display()))?;
            let info = plugin.info();
            println!("file:        {}", file.display());
            println!("protocol:    {} {}", info.id, info.version);
            println!("serves:      {}", info.system_protocol);
            println!("wit:         {}", info.wit_package);
            println!("digest:      sha256:{}", info.digest);
            println!(
                "signature:   {}",
                describe_status(&halo_signing::check_file(&file, &keys)?)
            );
            println!("imports:     {}", info.imports.join(", "));
            println!("exports:     {}", info.exports.join(", "));
            println!("stages:");
            for s in &info.stages {
                println!("  {:>3} {:<36} {:?}", s.number, s.name, s.kind);
            }
            Ok(())
        }
        PluginCommand::List {
            dir,
            trusted_keys,
            require_signatures,
        } => {
            let mut config = halo_registry::RegistryConfig::new(&dir);
            config.trusted = trusted(trusted_keys.as_deref())?;
            if require_signatures {
                config.policy = SignaturePolicy::Required;
            }
            let runtime = Runtime::new(EngineConfig::default())?;
            let reg = halo_registry::PluginRegistry::open(runtime, config)?;
            for p in reg.list() {
                println!(
                    "{:<16} {:<10} {:<32} {}  sha256:{}",
                    p.id,
                    p.version,
                    p.system_protocol.to_string(),
                    p.wit_package,
                    &p.digest
                );
            }
            for (path, why) in reg.refused() {
                println!("REFUSED {}: {why}", path.display());
            }
            Ok(())
        }
    }
}
