//! Which stored assets an older model revision or other generation settings made, and why.
//!
//! Every asset records how it was made: its pipeline, each model's id and revision
//! (`pipeline.models`) and the settings that change a shape (`pipeline.settings`,
//! `num_points`, `seed`). [`Current`] builds the same record from the flags a run would use
//! now, without loading any weights: revisions come from resolving each repo (the hub
//! cache's refs, or `local` for a `--weights` folder), settings from the same function the
//! pipeline records them with. An asset is stale when a recorded value differs from the
//! current one. What an asset does not record (an asset older than the setting) is not
//! compared: unknown is not different. Where a run computed (device, dtypes, lumen's
//! version) is not compared either: it is not what was asked for.
//!
//! Per-concept values (part count, seed) are compared only for concepts of the catalogue
//! the comparison is given, since without one nothing says what they should be.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::asset::{Asset, ModelInfo};
use crate::concept::{Catalog, Concept};
use crate::generation::{request_for, PipelineKind};
use crate::pipeline::partcrafter::{generation_settings, ModelOptions};
use crate::weights::{self, WeightsSource};

/// What a run with the current flags would record.
#[derive(Debug, Clone)]
pub struct Current {
    /// None: each asset is compared with its own pipeline's current settings.
    pub pipeline: Option<&'static str>,
    /// The models' current revisions (partcrafter), or why they are unknown; resolved on
    /// first use, so comparing procedural assets never looks for weights.
    models: std::sync::OnceLock<Result<Vec<ModelInfo>, String>>,
    model: ModelOptions,
    pub partcrafter_settings: BTreeMap<String, Value>,
    pub points: usize,
    pub catalog: Option<Catalog>,
}

/// What the comparison was made against (the `stats` report shows it).
#[derive(Debug, Clone, Serialize)]
pub struct Against {
    pub pipeline: String,
    pub models: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_unknown: Option<String>,
    pub settings: BTreeMap<String, Value>,
    pub points: usize,
    pub catalog: bool,
}

pub fn pipeline_name(kind: PipelineKind) -> &'static str {
    match kind {
        PipelineKind::PartCrafter => "partcrafter",
        PipelineKind::Procedural => "procedural",
    }
}

/// The models the partcrafter pipeline would record now, resolved without loading weights
/// (the same repos and files `PartCrafterGenerator::load` resolves).
pub fn current_models(model: &ModelOptions) -> Result<Vec<ModelInfo>, String> {
    let source = WeightsSource::from_env(model.weights_dir.clone()).with_revisions(&model.revisions);
    [
        (weights::SDXL_TURBO, "unet/config.json"),
        (weights::RMBG, "model.safetensors"),
        (weights::PARTCRAFTER, "transformer/config.json"),
    ]
    .into_iter()
    .map(|(repo, file)| {
        let r = source.resolve(repo, file).map_err(|e| format!("{e:#}"))?;
        Ok(ModelInfo { id: repo.id.into(), revision: r.commit, license: Some(repo.license.id.into()) })
    })
    .collect()
}

impl Current {
    /// The current record for `pipeline` (None: each asset's own) with these flags.
    pub fn new(pipeline: Option<PipelineKind>, model: &ModelOptions, points: usize, catalog: Option<Catalog>) -> Self {
        Self {
            pipeline: pipeline.map(pipeline_name),
            models: std::sync::OnceLock::new(),
            model: model.clone(),
            partcrafter_settings: generation_settings(model),
            points,
            catalog,
        }
    }

    /// The same, with the current models given instead of resolved.
    pub fn with_models(self, models: Result<Vec<ModelInfo>, String>) -> Self {
        Self { models: std::sync::OnceLock::from(models), ..self }
    }

    /// The partcrafter models' current revisions (resolved once, on first use).
    pub fn models(&self) -> &Result<Vec<ModelInfo>, String> {
        self.models.get_or_init(|| current_models(&self.model))
    }

    /// What the comparison is against; models only once some asset needed them.
    pub fn against(&self) -> Against {
        let models = self.models.get();
        Against {
            pipeline: self.pipeline.unwrap_or("each asset's own").into(),
            models: models.into_iter().flatten().flatten().map(|m| format!("{}@{}", m.id, m.revision)).collect(),
            models_unknown: models.and_then(|m| m.as_ref().err().cloned()),
            settings: self.partcrafter_settings.clone(),
            points: self.points,
            catalog: self.catalog.is_some(),
        }
    }

    /// Why `asset` is stale (empty: it is current).
    pub fn why_stale(&self, asset: &Asset) -> Vec<String> {
        let made_by = asset.pipeline.name.as_str();
        if let Some(want) = self.pipeline.filter(|p| *p != made_by) {
            return vec![format!("made by the {made_by} pipeline, current {want}")];
        }
        let mut why = Vec::new();
        let recorded = &asset.pipeline.settings;
        if made_by == "partcrafter" {
            self.compare_models(asset, &mut why);
            let asked_tokens = tokens_asked(recorded);
            for (k, v) in &self.partcrafter_settings {
                let r = if k == "tokens" { asked_tokens.as_ref().or(recorded.get(k)) } else { recorded.get(k) };
                compare(&mut why, k, r, Some(v));
            }
            let prompt = crate::models::sdxl::prompt::canonical_prompt(&asset.normalized);
            compare(&mut why, "prompt", recorded.get("prompt"), Some(&Value::from(prompt)));
        } else {
            let template = crate::procedural::template_name(&asset.normalized).unwrap_or("generic");
            compare(&mut why, "template", recorded.get("template"), Some(&Value::from(template)));
        }
        if asset.num_points != self.points {
            why.push(format!("num_points {}, current {}", asset.num_points, self.points));
        }
        self.compare_concept(asset, &mut why);
        why
    }

    fn compare_models(&self, asset: &Asset, why: &mut Vec<String>) {
        let Ok(current) = self.models() else { return };
        for m in current {
            if let Some(old) = asset.pipeline.models.iter().find(|o| o.id == m.id) {
                if old.revision != m.revision {
                    why.push(format!("{} revision {}, current {}", m.id, old.revision, m.revision));
                }
            }
        }
    }

    /// Part count and seed, for concepts of the catalogue.
    fn compare_concept(&self, asset: &Asset, why: &mut Vec<String>) {
        let Some(catalog) = &self.catalog else { return };
        let Ok(concept) = Concept::parse(&asset.text) else { return };
        if catalog.find(&concept).is_none() {
            return;
        }
        let request = request_for(&concept, Some(catalog), None, None, self.points);
        let parts = match asset.pipeline.name.as_str() {
            "partcrafter" => Some(request.parts.unwrap_or(crate::concept::DEFAULT_PARTS)),
            _ => request.parts,
        };
        let recorded = asset.pipeline.settings.get("parts_requested");
        match (recorded, parts) {
            (Some(r), None) => why.push(format!("parts_requested {r}, current the template's own")),
            (r, Some(p)) => compare(why, "parts_requested", r, Some(&Value::from(p))),
            (None, None) => {}
        }
        let base_seed = asset.quality.as_ref().and_then(|q| q.attempts.first()).map_or(asset.seed, |a| a.seed);
        if base_seed != request.seed {
            why.push(format!("seed {base_seed}, current {}", request.seed));
        }
    }
}

/// What is stored under `key`, against `current`: None when nothing is stored, else why it
/// is stale (empty: current). A blob that does not decode is stale: it cannot be served.
pub fn check_stored(store: &crate::store::Store, key: &str, current: &Current) -> anyhow::Result<Option<Vec<String>>> {
    let Some(bytes) = store.get(&crate::store::Store::shape_rel(key))? else { return Ok(None) };
    Ok(Some(match Asset::decode(&bytes) {
        Ok((asset, _)) => current.why_stale(&asset),
        Err(e) => vec![format!("unreadable ({e})")],
    }))
}

/// The tokens per part a run asked for: `tokens` records what the parts were made with,
/// fewer after running out of device memory (`memory_retry`), which is not another setting.
fn tokens_asked(settings: &BTreeMap<String, Value>) -> Option<Value> {
    settings.get("memory_retry")?.as_array()?.first()?.get("tokens_from").cloned()
}

/// Adds a reason when both values are known and differ (numbers compared as numbers).
fn compare(why: &mut Vec<String>, key: &str, recorded: Option<&Value>, current: Option<&Value>) {
    let (Some(r), Some(c)) = (recorded, current) else { return };
    let same = match (r.as_f64(), c.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => r == c,
    };
    if !same {
        why.push(format!("{key} {r}, current {c}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::{build_asset, ProceduralGenerator, ShapeGenerator, ShapeRequest};

    fn procedural(text: &str, points: usize, parts: Option<usize>) -> Asset {
        let concept = Concept::parse(text).unwrap();
        let seed = crate::concept::default_seed(&concept.key);
        let request = ShapeRequest { concept, parts, seed, points, part_names: vec![] };
        let mut t = crate::stage::Timings::default();
        let shape = ProceduralGenerator.generate(&request, &mut t).unwrap();
        build_asset(&request, shape, t).unwrap()
    }

    fn current(pipeline: Option<PipelineKind>, models: Vec<ModelInfo>) -> Current {
        Current::new(pipeline, &ModelOptions::default(), 2048, None).with_models(Ok(models))
    }

    fn model(id: &str, revision: &str) -> ModelInfo {
        ModelInfo { id: id.into(), revision: revision.into(), license: None }
    }

    #[test]
    fn procedural_assets_are_stale_on_points_template_or_pipeline_only() {
        let now = current(None, vec![]);
        assert!(now.why_stale(&procedural("chair", 2048, None)).is_empty());
        assert_eq!(now.why_stale(&procedural("chair", 1024, None)), ["num_points 1024, current 2048"]);
        let mut old = procedural("chair", 2048, None);
        old.pipeline.settings.insert("template".into(), "stool".into());
        assert_eq!(now.why_stale(&old), ["template \"stool\", current \"chair\""]);
        let pc = current(Some(PipelineKind::PartCrafter), vec![]);
        assert_eq!(
            pc.why_stale(&procedural("chair", 2048, None)),
            ["made by the procedural pipeline, current partcrafter"]
        );
    }

    #[test]
    fn partcrafter_assets_are_stale_on_a_revision_or_a_setting_and_unknown_is_not_different() {
        let mut asset = procedural("chair", 2048, None);
        asset.pipeline.name = "partcrafter".into();
        let mut settings = generation_settings(&ModelOptions::default());
        settings.insert("prompt".into(), crate::models::sdxl::prompt::canonical_prompt("chair").into());
        asset.pipeline.settings = settings;
        asset.pipeline.models = vec![model("wgsxm/PartCrafter", "aaa"), model("briaai/RMBG-1.4", "bbb")];
        let now = current(None, vec![model("wgsxm/PartCrafter", "aaa"), model("briaai/RMBG-1.4", "bbb")]);
        assert!(now.why_stale(&asset).is_empty(), "{:?}", now.why_stale(&asset));
        let newer = current(None, vec![model("wgsxm/PartCrafter", "ccc"), model("briaai/RMBG-1.4", "bbb")]);
        assert_eq!(newer.why_stale(&asset), ["wgsxm/PartCrafter revision aaa, current ccc"]);
        let unknown = current(None, vec![]).with_models(Err("no cache".into()));
        assert!(unknown.why_stale(&asset).is_empty());
        asset.pipeline.settings.insert("steps".into(), 20.into());
        asset.pipeline.settings.remove("extract_depth");
        assert_eq!(now.why_stale(&asset), ["steps 20, current 50"], "a setting not recorded is not compared");
    }

    #[test]
    fn catalogue_part_counts_and_seeds_are_compared_for_its_concepts_only() {
        let catalog = Catalog::parse(r#"[{"name": "chair", "parts": 4}]"#).unwrap();
        let now = Current::new(None, &ModelOptions::default(), 2048, Some(catalog)).with_models(Ok(vec![]));
        assert!(now.why_stale(&procedural("chair", 2048, Some(4))).is_empty());
        assert_eq!(now.why_stale(&procedural("chair", 2048, Some(6))), ["parts_requested 6, current 4"]);
        assert!(now.why_stale(&procedural("mug", 2048, Some(1))).is_empty(), "not in the catalogue");
        let mut reseeded = procedural("chair", 2048, Some(4));
        reseeded.seed = 5;
        assert_eq!(now.why_stale(&reseeded).len(), 1);
    }
}
