//! The deployment files agree with the code: `deploy/docker-compose.yml`, `deploy/Dockerfile*`,
//! `deploy/k8s/` (with KEDA) and, when present, `deploy/prometheus.yml` name the ports, queue
//! names, settings and metric names that genq actually uses. Every `GENQ__*` variable they set is
//! loaded through `genq_shared::settings`, so a misspelled or mistyped setting fails here rather
//! than in a container at 3 a.m. No services needed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

use genq_shared::metrics as m;
use genq_shared::settings::Settings;
use genq_shared::topology::queue_name;
use genq_shared::Priority;

fn deploy_dir() -> PathBuf {
    genq_tests::workspace_root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a YAML file, with `<<` merge keys applied.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        v.apply_merge().unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match cur {
            Value::Sequence(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)).unwrap_or(&Value::Null),
            _ => cur.get(key).unwrap_or(&Value::Null),
        };
    }
    cur
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => serde_yaml::to_string(other).unwrap_or_default(),
    }
}

/// Compose interpolation with an empty environment: `${VAR:-default}`, `${VAR-default}` and
/// `${VAR}` become what compose would use when VAR is unset.
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else { break };
        let inner = &rest[start + 2..start + end];
        let default = inner.split_once(":-").or_else(|| inner.split_once('-')).map(|(_, d)| d).unwrap_or("");
        out.push_str(default);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Loads settings from `env` (only `GENQ__*` entries are used), failing the test with `what` if
/// any variable is not a setting or its value does not parse.
fn load_settings(what: &str, env: &BTreeMap<String, String>) -> Settings {
    let genq: HashMap<String, String> = env.iter().filter(|(k, _)| k.starts_with("GENQ__")).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert!(!genq.is_empty(), "{what} sets no GENQ__ variable");
    Settings::load_with_env(None, &[], Some(genq)).unwrap_or_else(|e| panic!("{what}: settings rejected: {e}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr:?}"))
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map(|(h, _)| h).unwrap_or("")
}

/// Seconds of a compose duration such as `45s` or `1m30s`.
fn duration_secs(s: &str) -> u64 {
    let (mut total, mut num) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().unwrap_or(0);
            total += match c {
                'h' => n * 3600,
                'm' => n * 60,
                _ => n,
            };
            num.clear();
        }
    }
    total + num.parse::<u64>().unwrap_or(0)
}

/// Every metric name genq declares (histograms also expose `_bucket`, `_sum`, `_count`).
fn known_metrics() -> Vec<&'static str> {
    vec![
        m::JOBS_TOTAL,
        m::PROMPT_TOKENS_TOTAL,
        m::GENERATED_TOKENS_TOTAL,
        m::BATCH_SIZE,
        m::BATCH_TOKENS,
        m::QUEUE_WAIT_SECONDS,
        m::TIME_TO_FIRST_TOKEN_SECONDS,
        m::INTER_TOKEN_LATENCY_SECONDS,
        m::JOB_DURATION_SECONDS,
        m::ENGINE_STEP_SECONDS,
        m::RUNNING_SEQUENCES,
        m::WAITING_JOBS,
        m::INFLIGHT_DELIVERIES,
        m::DEAD_LETTERED_TOTAL,
        m::WORKER_INFO,
        m::KV_CACHE_TOKENS,
        m::PREFIX_CACHE_HIT_TOKENS_TOTAL,
        m::PREFIX_CACHE_TOKENS,
        m::PREFIX_CACHE_EVICTIONS_TOTAL,
        m::RECONNECTS_TOTAL,
        m::WAITING_TOKENS,
        m::QUEUE_READY_MESSAGES,
        m::QUEUE_CONSUMERS,
        m::QUEUE_BACKLOG_TOKENS,
        m::PUBLISHED_TOTAL,
        m::PUBLISH_DURATION_SECONDS,
        m::HTTP_REQUESTS_TOTAL,
    ]
}

/// Every `genq_…` identifier in `text` must be a metric genq declares.
fn assert_metrics_known(what: &str, text: &str) -> usize {
    let known = known_metrics();
    let mut found = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("genq_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start + text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len() - start);
        let name = &text[start..end];
        i = end;
        if !boundary {
            continue;
        }
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(known.contains(&name) || known.contains(&base), "{what} names metric {name}, which genq does not export");
        found += 1;
    }
    found
}

fn compose() -> Value {
    yaml_docs(&deploy_dir().join("docker-compose.yml")).into_iter().next().expect("compose file has a document")
}

fn compose_env(service: &Value) -> BTreeMap<String, String> {
    let env = get(service, "environment");
    let map = env.as_mapping().expect("environment is a mapping (KEY: value)");
    map.iter().map(|(k, v)| (text(k), interpolate(&text(v)))).collect()
}

#[test]
fn compose_workers_scale_with_no_fixed_name_or_host_port_and_bind_metrics_for_prometheus() {
    let c = compose();
    for name in ["worker", "worker-gpu"] {
        let svc = get(&c, &format!("services.{name}"));
        assert!(svc.is_mapping(), "compose has no service {name}");
        assert!(svc.get("container_name").is_none(), "{name}: container_name prevents --scale");
        assert!(svc.get("ports").is_none(), "{name}: a published host port prevents --scale; use expose");
        let env = compose_env(svc);
        let s = load_settings(&format!("compose service {name}"), &env);
        assert_eq!(host_of(&s.worker.metrics_addr), "0.0.0.0", "{name}: metrics must listen on every interface in a container");
        let port = port_of(&s.worker.metrics_addr).to_string();
        let exposed: Vec<String> = get(svc, "expose").as_sequence().map(|v| v.iter().map(text).collect()).unwrap_or_default();
        assert!(exposed.contains(&port), "{name}: metrics port {port} not exposed ({exposed:?})");
        let grace = duration_secs(&text(get(svc, "stop_grace_period")));
        assert!(grace > s.worker.shutdown_grace_secs, "{name}: stop_grace_period {grace}s must exceed the drain time {}s", s.worker.shutdown_grace_secs);
        assert_eq!(s.worker.model_name, genq_shared::job::DEFAULT_MODEL, "{name}: serves the default model's queues");
        let mounts: Vec<String> = get(svc, "volumes").as_sequence().expect("volumes").iter().map(|v| interpolate(&text(v))).collect();
        let model_dir = Path::new(&s.worker.model_path).parent().and_then(Path::to_str).unwrap_or_default().to_string();
        assert!(mounts.iter().any(|v| v.split(':').nth(1) == Some(model_dir.as_str())), "{name}: model dir {model_dir} is not a volume: {mounts:?}");
        let default_file = Path::new(&Settings::default().worker.model_path).file_name().map(|f| f.to_owned());
        assert_eq!(Path::new(&s.worker.model_path).file_name().map(|f| f.to_owned()), default_file, "{name}: model file name");
    }
    let gpu = get(&c, "services.worker-gpu");
    assert!(get(gpu, "profiles").as_sequence().is_some_and(|p| p.iter().any(|x| text(x) == "gpu")), "GPU worker is behind profile gpu");
    let device = get(gpu, "deploy.resources.reservations.devices.0");
    assert_eq!(text(get(device, "driver")), "nvidia");
    assert!(get(device, "capabilities").as_sequence().is_some_and(|c| c.iter().any(|x| text(x) == "gpu")));
    assert_eq!(load_settings("worker-gpu", &compose_env(gpu)).worker.device, "cuda");
    assert!(text(get(gpu, "build.dockerfile")).ends_with("Dockerfile.cuda"));
}

#[test]
fn compose_gateway_listens_on_the_port_it_publishes_and_every_service_setting_is_valid() {
    let c = compose();
    let gw = get(&c, "services.gateway");
    let command: Vec<String> = get(gw, "command").as_sequence().expect("gateway command").iter().map(text).collect();
    assert_eq!(command[0], "genq-gateway", "{command:?}");
    assert_eq!(text(get(gw, "build.target")), "gateway", "the gateway image is the Dockerfile's model-free target");
    let s = load_settings("compose gateway", &compose_env(gw));
    let port = port_of(&s.gateway.listen);
    assert_eq!(host_of(&s.gateway.listen), "0.0.0.0");
    let published: Vec<String> = get(gw, "ports").as_sequence().expect("gateway ports").iter().map(|p| interpolate(&text(p))).collect();
    assert!(published.iter().any(|p| p.ends_with(&format!(":{port}"))), "gateway listens on {port} but publishes {published:?}");
    // Connections point at the compose services by name.
    assert!(s.amqp.url.contains("@rabbitmq:5672"), "{}", s.amqp.url);
    assert!(s.redis.url.starts_with("redis://redis:6379"), "{}", s.redis.url);
    for name in ["rabbitmq", "redis"] {
        assert!(get(&c, &format!("services.{name}.healthcheck.test")).is_sequence(), "{name} has a healthcheck");
    }
    for (name, svc) in get(&c, "services").as_mapping().expect("services") {
        if let Some(env) = svc.get("environment").and_then(Value::as_mapping) {
            let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (text(k), interpolate(&text(v)))).collect();
            if env.keys().any(|k| k.starts_with("GENQ__")) {
                load_settings(&format!("compose service {}", text(name)), &env);
            }
        }
    }
}

#[test]
fn images_expose_the_metrics_port_their_settings_bind() {
    for file in ["Dockerfile", "Dockerfile.cuda"] {
        let df = read(&deploy_dir().join(file));
        let env: BTreeMap<String, String> = df
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter(|(k, _)| k.starts_with("GENQ__"))
            .map(|(k, v)| (k.to_string(), v.trim_end_matches('\\').to_string()))
            .collect();
        let s = load_settings(file, &env);
        let port = port_of(&s.worker.metrics_addr);
        assert!(df.contains(&format!("EXPOSE {port}")), "{file} binds metrics on {port} but does not EXPOSE it");
        assert!(df.contains("HEALTHCHECK"), "{file} has no HEALTHCHECK");
        assert!(df.lines().any(|l| l.starts_with("USER ") && !l.contains("root") && !l.contains(" 0")), "{file} runs as root");
    }
    let ignore = read(&genq_tests::workspace_root().join(".dockerignore"));
    for dir in ["target/", "models/", ".cache/"] {
        assert!(ignore.lines().any(|l| l.trim() == dir), ".dockerignore keeps {dir} out of the build context");
    }
}

/// Every Kubernetes document under deploy/k8s (and gpu/), by (kind, name).
fn k8s_resources() -> BTreeMap<(String, String), Value> {
    let root = deploy_dir().join("k8s");
    let mut out = BTreeMap::new();
    for dir in [root.clone(), root.join("gpu")] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml") && p.file_name().is_some_and(|n| n != "kustomization.yaml"))
            .collect();
        files.sort();
        for f in files {
            for doc in yaml_docs(&f) {
                let key = (text(get(&doc, "kind")), text(get(&doc, "metadata.name")));
                assert!(!key.0.is_empty() && !key.1.is_empty(), "{}: a document without kind or name", f.display());
                assert!(out.insert(key.clone(), doc).is_none(), "{key:?} defined twice");
            }
        }
    }
    out
}

fn k8s(res: &BTreeMap<(String, String), Value>, kind: &str, name: &str) -> Value {
    res.get(&(kind.to_string(), name.to_string())).cloned().unwrap_or_else(|| panic!("deploy/k8s has no {kind}/{name}"))
}

/// The environment a container sees: its ConfigMap and Secret `envFrom`, then its `env` values.
fn container_env(res: &BTreeMap<(String, String), Value>, container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in get(container, "envFrom").as_sequence().into_iter().flatten() {
        let (kind, field, name) = if from.get("configMapRef").is_some() {
            ("ConfigMap", "data", text(get(from, "configMapRef.name")))
        } else {
            ("Secret", "stringData", text(get(from, "secretRef.name")))
        };
        let r = k8s(res, kind, &name);
        for (k, v) in get(&r, field).as_mapping().into_iter().flatten() {
            env.insert(text(k), text(v));
        }
    }
    for e in get(container, "env").as_sequence().into_iter().flatten() {
        // Values from the downward API are filled in by Kubernetes; any string loads.
        let value = if e.get("valueFrom").is_some() { "from-the-pod".to_string() } else { text(get(e, "value")) };
        env.insert(text(get(e, "name")), value);
    }
    env
}

#[test]
fn k8s_workers_probe_livez_and_readyz_on_their_metrics_port_and_outlive_the_drain() {
    let res = k8s_resources();
    for name in ["genq-worker", "genq-worker-gpu"] {
        let d = k8s(&res, "Deployment", name);
        let pod = get(&d, "spec.template.spec");
        let c = get(pod, "containers.0");
        let s = load_settings(&format!("Deployment {name}"), &container_env(&res, c));
        assert_eq!(host_of(&s.worker.metrics_addr), "0.0.0.0", "{name}: probes reach the pod IP");
        let port = port_of(&s.worker.metrics_addr);
        let ports = get(c, "ports").as_sequence().expect("container ports");
        let metrics_port = ports.iter().find(|p| text(get(p, "name")) == "metrics").expect("a port named metrics");
        assert_eq!(text(get(metrics_port, "containerPort")), port.to_string(), "{name}: containerPort vs worker.metrics_addr");
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez"), ("startupProbe", "/livez")] {
            assert_eq!(text(get(c, &format!("{probe}.httpGet.path"))), path, "{name} {probe}");
            let p = text(get(c, &format!("{probe}.httpGet.port")));
            assert!(p == "metrics" || p == port.to_string(), "{name} {probe} port {p}");
        }
        let grace: u64 = text(get(pod, "terminationGracePeriodSeconds")).parse().expect("terminationGracePeriodSeconds");
        assert!(grace > s.worker.shutdown_grace_secs, "{name}: terminationGracePeriodSeconds {grace} <= drain {}", s.worker.shutdown_grace_secs);
        assert!(get(c, "resources.requests").is_mapping(), "{name}: resource requests");
        assert_eq!(text(get(pod, "securityContext.runAsNonRoot")), "true", "{name} runs as non-root");
        if name.ends_with("gpu") {
            assert_eq!(s.worker.device, "cuda");
            let limits = get(c, "resources.limits").as_mapping().expect("limits");
            assert!(limits.get("nvidia.com/gpu").is_some(), "{name}: requests a GPU");
        }
        let mounts = get(c, "volumeMounts").as_sequence().expect("volumeMounts");
        let model_dir = Path::new(&s.worker.model_path).parent().and_then(Path::to_str).unwrap_or_default().to_string();
        assert!(mounts.iter().any(|v| text(get(v, "mountPath")) == model_dir), "{name}: model dir {model_dir} not mounted");
    }
    let svc = k8s(&res, "Service", "genq-worker-metrics");
    assert_eq!(text(get(&svc, "spec.ports.0.targetPort")), "metrics");
}

#[test]
fn keda_scales_workers_on_their_models_queues_with_the_broker_url_from_the_secret() {
    let res = k8s_resources();
    let auth = k8s(&res, "TriggerAuthentication", "genq-rabbitmq");
    let secret_ref = get(&auth, "spec.secretTargetRef.0");
    assert_eq!(text(get(secret_ref, "parameter")), "host", "KEDA's rabbitmq scaler reads the URL from `host`");
    let secret = k8s(&res, "Secret", &text(get(secret_ref, "name")));
    let key = text(get(secret_ref, "key"));
    assert!(get(&secret, "stringData").get(key.as_str()).is_some(), "Secret has no key {key}");
    assert_eq!(key, "GENQ__AMQP__URL", "KEDA and the workers read the same broker URL");
    for (so_name, deployment) in [("genq-worker", "genq-worker"), ("genq-worker-gpu", "genq-worker-gpu")] {
        let so = k8s(&res, "ScaledObject", so_name);
        assert_eq!(text(get(&so, "spec.scaleTargetRef.name")), deployment);
        let d = k8s(&res, "Deployment", deployment);
        let s = load_settings(deployment, &container_env(&res, get(&d, "spec.template.spec.containers.0")));
        let mut queues = Vec::new();
        for t in get(&so, "spec.triggers").as_sequence().expect("triggers") {
            if text(get(t, "type")) == "rabbitmq" {
                assert_eq!(text(get(t, "metadata.mode")), "QueueLength");
                assert!(text(get(t, "metadata.value")).parse::<u32>().is_ok_and(|v| v > 0));
                let auth_name = text(get(t, "authenticationRef.name"));
                assert!(res.contains_key(&("TriggerAuthentication".to_string(), auth_name.clone())), "no TriggerAuthentication {auth_name}");
                queues.push(text(get(t, "metadata.queueName")));
            }
        }
        queues.sort();
        let mut expected: Vec<String> = Priority::ALL.into_iter().map(|p| queue_name(&s.worker.model_name, p)).collect();
        expected.sort();
        assert_eq!(queues, expected, "{so_name} must scale on the queues its workers consume");
    }
}

#[test]
fn the_optional_prometheus_trigger_follows_the_token_backlog_gauge_of_the_default_queue() {
    let patch = yaml_docs(&deploy_dir().join("k8s/prometheus-trigger/trigger.yaml"));
    let op = get(&patch[0], "0");
    assert_eq!(text(get(op, "path")), "/spec/triggers/-");
    assert_eq!(text(get(op, "value.type")), "prometheus");
    let query = text(get(op, "value.metadata.query"));
    assert!(query.contains(m::QUEUE_BACKLOG_TOKENS), "{query}");
    assert!(query.contains(&format!("\"{}\"", queue_name(genq_shared::job::DEFAULT_MODEL, Priority::Normal))), "{query}");
    assert_eq!(assert_metrics_known("prometheus-trigger", &query), 1);
    let component = yaml_docs(&deploy_dir().join("k8s/prometheus-trigger/kustomization.yaml"));
    assert_eq!(text(get(&component[0], "kind")), "Component");
    assert_eq!(text(get(&component[0], "patches.0.target.name")), "genq-worker");
}

#[test]
fn k8s_gateway_service_targets_the_port_genq_serve_listens_on() {
    let res = k8s_resources();
    let d = k8s(&res, "Deployment", "genq-gateway");
    let c = get(&d, "spec.template.spec.containers.0");
    let command: Vec<String> = get(c, "command").as_sequence().expect("command").iter().map(text).collect();
    assert_eq!(command[0], "genq-gateway", "{command:?}");
    let s = load_settings("Deployment genq-gateway", &container_env(&res, c));
    let port = port_of(&s.gateway.listen);
    assert_eq!(host_of(&s.gateway.listen), "0.0.0.0");
    let http = get(c, "ports").as_sequence().expect("ports").iter().find(|p| text(get(p, "name")) == "http").cloned().expect("port http");
    assert_eq!(text(get(&http, "containerPort")), port.to_string());
    assert_eq!(text(get(c, "readinessProbe.httpGet.path")), "/healthz");
    let svc = k8s(&res, "Service", "genq-gateway");
    assert_eq!(text(get(&svc, "spec.ports.0.targetPort")), "http");
}

#[test]
fn kustomizations_list_only_files_that_exist_and_every_manifest_file_is_listed() {
    let root = deploy_dir().join("k8s");
    for dir in [root.clone(), root.join("gpu")] {
        let k = yaml_docs(&dir.join("kustomization.yaml"));
        let listed: Vec<String> = get(&k[0], "resources").as_sequence().expect("resources").iter().map(text).collect();
        for r in &listed {
            assert!(dir.join(r).exists(), "{}: resource {r} does not exist", dir.display());
        }
        for entry in std::fs::read_dir(&dir).expect("read dir").filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                assert!(listed.contains(&name), "{}: {name} is not in kustomization.yaml", dir.display());
            }
        }
    }
}

#[test]
fn deploy_files_name_only_metrics_genq_exports() {
    let mut found = 0;
    for dir in ["k8s", "k8s/gpu", "k8s/prometheus-trigger"] {
        for entry in std::fs::read_dir(deploy_dir().join(dir)).expect("read dir").filter_map(Result::ok) {
            let p = entry.path();
            if p.is_file() {
                found += assert_metrics_known(&p.display().to_string(), &read(&p));
            }
        }
    }
    assert!(found >= 1, "the KEDA token trigger names the backlog metric");
    assert_eq!(assert_metrics_known("probe", "rate(genq_jobs_total[1m]) genq_batch_size_bucket"), 2);
}

#[test]
fn prometheus_scrapes_the_workers_metrics_port_when_its_config_is_present() {
    let path = deploy_dir().join("prometheus.yml");
    if !path.exists() {
        eprintln!("deploy/prometheus.yml absent: nothing to check");
        return;
    }
    let body = read(&path);
    let port = port_of(&compose_env(get(&compose(), "services.worker"))["GENQ__WORKER__METRICS_ADDR"]).to_string();
    let prom = yaml_docs(&path).into_iter().next().expect("prometheus.yml has a document");
    let scrape = get(&prom, "scrape_configs").as_sequence().expect("scrape_configs");
    let worker_job = scrape.iter().any(|job| {
        let j = serde_yaml::to_string(job).unwrap_or_default();
        j.contains("worker") && (j.contains(&format!(":{port}")) || j.contains(&format!("port: {port}")))
    });
    assert!(worker_job, "deploy/prometheus.yml has no scrape job for the workers on port {port}");
    assert_metrics_known("deploy/prometheus.yml", &body);
    for rule_file in get(&prom, "rule_files").as_sequence().into_iter().flatten() {
        let rules = deploy_dir().join(text(rule_file));
        if rules.exists() {
            assert_metrics_known(&rules.display().to_string(), &read(&rules));
        }
    }
}

#[test]
fn interpolation_uses_compose_defaults() {
    assert_eq!(interpolate("a${X:-1}b${Y-2}c${Z}"), "a1b2c");
    assert_eq!(duration_secs("1m30s"), 90);
    assert_eq!(duration_secs("45s"), 45);
}

#[test]
fn grafana_reads_dashboards_where_compose_mounts_them_and_they_name_known_metrics() {
    let root = genq_tests::workspace_root().join("grafana");
    let provider = root.join("provisioning/dashboards/genq.yml");
    if !provider.exists() {
        eprintln!("grafana/ absent: nothing to check");
        return;
    }
    let c = compose();
    let mounts: Vec<String> = get(&c, "services.grafana.volumes").as_sequence().expect("grafana volumes").iter().map(text).collect();
    let path = text(get(&yaml_docs(&provider)[0], "providers.0.options.path"));
    assert!(mounts.iter().any(|m| m.starts_with("../grafana/dashboards:") && m.split(':').nth(1) == Some(path.as_str())), "dashboards at {path}, mounts {mounts:?}");
    assert!(mounts.iter().any(|m| m.starts_with("../grafana/provisioning:/etc/grafana/provisioning")), "{mounts:?}");
    let datasource = read(&root.join("provisioning/datasources/prometheus.yml"));
    assert!(datasource.contains("http://prometheus:9090"), "the datasource points at the compose service prometheus");
    let mut found = 0;
    for entry in std::fs::read_dir(root.join("dashboards")).expect("dashboards").filter_map(Result::ok) {
        found += assert_metrics_known(&entry.path().display().to_string(), &read(&entry.path()));
    }
    assert!(found > 0, "the dashboards query genq metrics");
}
