//! Reading the files under `deploy/`: the YAML job definitions and CI configs (as JSON
//! values, to walk them with pointers) and the environment variables each one sets.

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use super::docker::repo;

/// The one YAML document in `deploy/<rel>`, as JSON.
pub fn load(rel: &str) -> Value {
    let path = repo().join("deploy").join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one YAML document expected");
    to_json(&docs[0])
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s.parse::<f64>().map(Value::from).unwrap_or_else(|_| Value::String(s.clone())),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue => Value::Null,
        Yaml::Alias(_) => panic!("YAML aliases are not used in deploy/"),
    }
}

pub fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer).unwrap_or_else(|| panic!("missing {pointer}"))
}

/// A container's `env` list (`[{name, value}]`) as (name, value) pairs.
pub fn container_env(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    let value = match &e["value"] {
                        Value::String(s) => s.clone(),
                        other => panic!("env {} must be a string, is {other}", e["name"]),
                    };
                    (e["name"].as_str().expect("env name").to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn string_list(v: &Value) -> Vec<String> {
    v.as_array().expect("a list").iter().map(|s| s.as_str().expect("a string").to_string()).collect()
}

/// The Cloud Run Job's one container.
pub fn cloud_run_container(job: &Value) -> &Value {
    let containers = at(job, "/spec/template/spec/template/spec/containers").as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container per task");
    &containers[0]
}

pub fn cloud_run_task_count(job: &Value) -> usize {
    at(job, "/spec/template/spec/taskCount").as_u64().expect("taskCount is a number") as usize
}

pub fn k8s_container(job: &Value) -> &Value {
    let containers = at(job, "/spec/template/spec/containers").as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
}

/// Names of the variables a GitHub Actions workflow sets (`env:` of the workflow, its jobs and
/// their steps).
pub fn workflow_env_names(wf: &Value) -> Vec<String> {
    let mut names = keys(&wf["env"]);
    for job in wf["jobs"].as_object().expect("jobs").values() {
        names.extend(keys(&job["env"]));
        for step in job["steps"].as_array().into_iter().flatten() {
            names.extend(keys(&step["env"]));
        }
    }
    names
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// Names set by a Cloud Build config: each step's `env: ["NAME=value"]` and `options.env`.
pub fn cloud_build_env_names(cb: &Value) -> Vec<String> {
    let mut lists: Vec<&Value> = vec![&cb["options"]["env"]];
    lists.extend(cb["steps"].as_array().expect("steps").iter().map(|s| &s["env"]));
    lists
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .map(|e| e.as_str().expect("NAME=value").split('=').next().unwrap().to_string())
        .collect()
}

/// Names set by `ENV` lines of a Dockerfile (`ENV A=1 B=2` or `ENV A 1`).
pub fn dockerfile_env_names(rel: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy").join(rel)).unwrap();
    let mut names = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| l.starts_with("ENV ")) {
        let rest = &line[4..];
        if rest.contains('=') {
            names.extend(rest.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, _)| k.to_string()));
        } else {
            names.push(rest.split_whitespace().next().unwrap().to_string());
        }
    }
    names
}
