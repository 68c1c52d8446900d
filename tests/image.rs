//! The container image, run the way a container runtime would run it.
//!
//! `tests/image.sh` builds the image from the Dockerfile, unpacks it with umoci into an OCI
//! runtime bundle (`config.json` + `rootfs/`) and sets `SIDECAR_IMAGE_BUNDLE` to it. This test
//! then starts the image's entrypoint with the image's environment, chrooted into the image's
//! root filesystem as the image's user, against a real Azurite and a real HTTP endpoint on
//! loopback. Every message must be delivered and deleted, `healthcheck` (Docker's
//! HEALTHCHECK) must find it live and ready, and SIGTERM must stop it cleanly: the image needs
//! nothing but itself (no libc, no /etc, no shell).
//!
//! Under a plain `cargo test` there is no bundle; the same scenario then runs the binary
//! cargo built, so the harness is exercised on every run and nothing is skipped. The image
//! run asserts, from /proc, that the process really ran inside the rootfs as the image's user.
//!
//! It also prints the process's peak RSS and CPU time for the run: the figures behind the
//! resource requests in deploy/base/deployment.yaml.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{queue_count_within, Azurite, Endpoint};

/// Messages sent through the sidecar: enough to keep MAX_IN_FLIGHT (32) busy for a while.
const MESSAGES: usize = 100;
const WAIT: Duration = Duration::from_secs(60);
/// The sidecar's memory limit in deploy/base/deployment.yaml; the run must stay well below.
const MEMORY_LIMIT_KIB: u64 = 64 * 1024;

/// How to start the sidecar: the image's entrypoint in its rootfs, or the host binary.
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// For the image: the rootfs and uid/gid the process must end up in.
    confined: Option<(PathBuf, u32, u32)>,
}

impl Launch {
    fn from_environment() -> Self {
        match std::env::var_os("SIDECAR_IMAGE_BUNDLE") {
            Some(bundle) => Self::image(Path::new(&bundle)),
            None => Self {
                program: PathBuf::from(env!("CARGO_BIN_EXE_azure-queue-sidecar")),
                args: Vec::new(),
                env: Vec::new(),
                confined: None,
            },
        }
    }

    /// Reads the OCI runtime config umoci wrote from the image config (ENTRYPOINT, ENV,
    /// USER) and wraps the entrypoint in `chroot --userspec`, as the runtime would.
    fn image(bundle: &Path) -> Self {
        let text = std::fs::read_to_string(bundle.join("config.json"))
            .unwrap_or_else(|e| panic!("read {}/config.json: {e}", bundle.display()));
        let config: serde_json::Value = serde_json::from_str(&text).expect("config.json is JSON");
        let strings = |value: &serde_json::Value| -> Vec<String> {
            value
                .as_array()
                .expect("an array of strings")
                .iter()
                .map(|v| v.as_str().expect("a string").to_string())
                .collect()
        };
        let process = &config["process"];
        let entrypoint = strings(&process["args"]);
        let env = strings(&process["env"])
            .into_iter()
            .map(|pair| {
                let (k, v) = pair.split_once('=').expect("KEY=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect();
        let uid = process["user"]["uid"].as_u64().expect("user.uid") as u32;
        let gid = process["user"]["gid"].as_u64().expect("user.gid") as u32;
        let root = bundle.join(config["root"]["path"].as_str().expect("root.path"));
        let root = root.canonicalize().expect("the bundle's rootfs exists");
        assert_eq!(
            entrypoint,
            ["/azure-queue-sidecar"],
            "the image's entrypoint"
        );
        assert_eq!((uid, gid), (65532, 65532), "the image's USER");

        let mut args = vec![
            format!("--userspec={uid}:{gid}"),
            root.display().to_string(),
        ];
        args.extend(entrypoint);
        Self {
            program: which("chroot"),
            args,
            env,
            confined: Some((root, uid, gid)),
        }
    }

    /// The entrypoint with `args` appended and the image's environment plus `extra_env`.
    fn command(&self, args: &[&str], extra_env: &[(String, String)]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .args(args)
            .env_clear()
            .envs(self.env.iter().chain(extra_env).map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    fn spawn(&self, extra_env: &[(String, String)], log: &Path) -> Child {
        let out = File::create(log).expect("create the sidecar log");
        let err = out.try_clone().expect("clone the log handle");
        self.command(&[], extra_env)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()))
    }

    /// Runs `healthcheck PATH` the way Docker's HEALTHCHECK does: a second process from the
    /// same image, with only the image's environment and `ADMIN_ADDR`.
    fn healthcheck(&self, path: &str, admin_addr: &str) -> (Option<i32>, String) {
        let env = [("ADMIN_ADDR".to_string(), admin_addr.to_string())];
        let output = self
            .command(&["healthcheck", path], &env)
            .output()
            .expect("run healthcheck");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code(), text)
    }
}

fn which(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found (coreutils)"))
}

/// A `/proc/<pid>/status` field in kB, e.g. VmHWM (peak RSS).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU time of `pid` so far (fields 14 and 15 of /proc/<pid>/stat, in ticks of
/// 1/100 s on Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Duration::from_millis((fields[11] + fields[12]) * 10)
}

fn process_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("effective uid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_alone_delivers_and_deletes_messages() {
    let launch = Launch::from_environment();
    let azurite = Azurite::start().await;
    let queue = azurite.create_queue("image").await;
    let endpoint = Endpoint::ok().await;

    let mut bodies: Vec<String> = (0..MESSAGES)
        .map(|i| format!(r#"{{"order":{i},"note":"from the image test"}}"#))
        .collect();
    for body in &bodies {
        queue.send(body, None, None).await.expect("send");
    }

    let log = std::env::temp_dir().join(format!("image-test-{}.log", std::process::id()));
    // The admin server on a free loopback port (its default, 0.0.0.0:9464, could be taken).
    let admin_addr = format!("127.0.0.1:{}", support::free_port());
    let env = vec![
        ("ADMIN_ADDR".to_string(), admin_addr.clone()),
        (
            "AZURE_STORAGE_CONNECTION_STRING".to_string(),
            azurite.connection_string(),
        ),
        ("QUEUE_NAME".to_string(), "image".to_string()),
        ("ENDPOINT_URL".to_string(), endpoint.url.clone()),
        ("POLL_MIN_INTERVAL".to_string(), "20ms".to_string()),
        ("POLL_MAX_INTERVAL".to_string(), "200ms".to_string()),
    ];
    let started = Instant::now();
    let mut child = launch.spawn(&env, &log);
    let pid = child.id();
    let dump = || std::fs::read_to_string(&log).unwrap_or_default();

    let delivered = support::wait_until(WAIT, || endpoint.count() >= MESSAGES).await;
    assert!(
        delivered,
        "endpoint got {} of {MESSAGES} messages; sidecar output:\n{}",
        endpoint.count(),
        dump()
    );
    let elapsed = started.elapsed();

    if let Some((root, uid, _gid)) = &launch.confined {
        let seen_root = std::fs::read_link(format!("/proc/{pid}/root")).expect("proc root");
        assert_eq!(
            &seen_root, root,
            "the sidecar runs inside the image's rootfs"
        );
        assert_eq!(
            process_uid(pid),
            *uid,
            "the sidecar runs as the image's user"
        );
    }
    let peak_rss = status_kib(pid, "VmHWM");
    let cpu = cpu_time(pid);

    // The probes Kubernetes and Docker use, answered by the image's own binary.
    for path in ["/healthz", "/readyz"] {
        let (code, text) = launch.healthcheck(path, &admin_addr);
        assert_eq!(
            code,
            Some(0),
            "healthcheck {path} from the image: {text}\nsidecar output:\n{}",
            dump()
        );
    }

    let mut received: Vec<String> = endpoint.received().iter().map(|r| r.body_text()).collect();
    received.sort();
    received.dedup();
    bodies.sort();
    assert_eq!(received, bodies, "every message arrived, byte for byte");

    let left = queue_count_within(&queue, 0, Duration::from_secs(10)).await;
    assert_eq!(left, 0, "every delivered message was deleted");

    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM");
    let deadline = Instant::now() + Duration::from_secs(25);
    let code = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit.code();
        }
        assert!(
            Instant::now() < deadline,
            "no exit 25 s after SIGTERM:\n{}",
            dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0), "clean exit after SIGTERM:\n{}", dump());

    eprintln!(
        "image test ({}): {MESSAGES} messages delivered and deleted in {:.2?}; \
         peak RSS {peak_rss} KiB, CPU {cpu:.2?}",
        match &launch.confined {
            Some((root, uid, gid)) => format!("chroot {} as {uid}:{gid}", root.display()),
            None => "host binary".to_string(),
        },
        elapsed
    );
    assert!(
        peak_rss < MEMORY_LIMIT_KIB / 2,
        "peak RSS {peak_rss} KiB is over half the deployment's 64 MiB limit"
    );
    let _ = std::fs::remove_file(&log);
}
