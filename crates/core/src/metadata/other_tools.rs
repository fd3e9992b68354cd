//! What other Stable Diffusion tools write, for the settings they share with A1111: ComfyUI's
//! `prompt` graph, InvokeAI's `Dream` command line, NovelAI's `Description` and `Comment`.
//! Only prompt, negative prompt, seed, steps, CFG, sampler and denoise are taken.

use serde_json::Value;

use super::validate::keep_valid;
use crate::settings::{Choice, Sampler, ScheduleType, Settings};

/// The settings of an image written by ComfyUI, InvokeAI or NovelAI; the first warning names
/// the tool and what was taken.
pub fn settings_from_other_tools(texts: &[(String, String)]) -> Option<(Settings, Vec<String>)> {
    let find = |key: &str| {
        texts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let (tool, taken) =
        if let Some(graph) = find("prompt").and_then(|t| serde_json::from_str(t).ok()) {
            ("ComfyUI", comfyui(&graph)?)
        } else if let Some(dream) = find("Dream") {
            ("InvokeAI", invokeai(dream)?)
        } else if let (Some(prompt), Some(comment)) = (find("Description"), find("Comment")) {
            ("NovelAI", novelai(prompt, comment)?)
        } else {
            return None;
        };
    let mut warnings = vec![format!(
        "{tool} metadata: took {}; the rest keeps its defaults",
        taken.names.join(", ")
    )];
    warnings.extend(taken.warnings);
    Some((keep_valid(taken.settings, &mut warnings), warnings))
}

/// Settings taken from a tool's metadata.
#[derive(Default)]
struct Taken {
    settings: Settings,
    names: Vec<&'static str>,
    warnings: Vec<String>,
}

impl Taken {
    fn prompt(&mut self, text: &str) {
        self.settings.prompt = text.trim().to_string();
        self.names.push("prompt");
    }
    fn negative(&mut self, text: &str) {
        self.settings.negative_prompt = text.trim().to_string();
        self.names.push("negative prompt");
    }
    fn seed(&mut self, seed: Option<i64>) {
        if let Some(seed) = seed {
            self.settings.seed = seed;
            self.names.push("seed");
        }
    }
    fn steps(&mut self, steps: Option<u64>) {
        if let Some(steps) = steps.and_then(|s| u32::try_from(s).ok()) {
            self.settings.steps = steps;
            self.names.push("steps");
        }
    }
    fn cfg(&mut self, cfg: Option<f64>) {
        if let Some(cfg) = cfg {
            self.settings.cfg = cfg;
            self.names.push("CFG");
        }
    }
    fn denoise(&mut self, denoise: Option<f64>) {
        if let Some(denoise) = denoise {
            self.settings.denoise = denoise;
            self.names.push("denoise");
        }
    }
    /// A sampler by one of k-diffusion's, ComfyUI's or InvokeAI's names.
    fn sampler(&mut self, name: &str) {
        let key = name
            .trim()
            .trim_start_matches("sample_")
            .trim_start_matches("k_")
            .to_ascii_lowercase();
        let sampler = match key.as_str() {
            "ddim" => Some(Sampler::Ddim),
            "euler" => Some(Sampler::Euler),
            "euler_a" | "euler_ancestral" => Some(Sampler::EulerA),
            "heun" => Some(Sampler::Heun),
            "dpmpp_2m" => Some(Sampler::DpmPp2m),
            "dpmpp_sde" => Some(Sampler::DpmPpSde),
            "dpmpp_2m_sde" => Some(Sampler::DpmPp2mSde),
            "uni_pc" | "unipc" => Some(Sampler::UniPc),
            "lcm" => Some(Sampler::Lcm),
            _ => None,
        };
        match sampler {
            Some(sampler) => {
                self.settings.sampler = sampler;
                self.names.push("sampler");
            }
            None => self.warnings.push(format!("ignored sampler {name:?}")),
        }
    }
    /// ComfyUI's scheduler names.
    fn schedule(&mut self, name: &str) {
        let schedule = match name {
            "normal" => Some(ScheduleType::Uniform),
            "karras" => Some(ScheduleType::Karras),
            "exponential" => Some(ScheduleType::Exponential),
            "sgm_uniform" | "simple" => Some(ScheduleType::SgmUniform),
            _ => ScheduleType::parse(name),
        };
        match schedule {
            Some(schedule) => {
                self.settings.schedule = schedule;
                self.names.push("schedule type");
            }
            None => self.warnings.push(format!("ignored scheduler {name:?}")),
        }
    }
}

/// ComfyUI: the first KSampler node, and the text encoders its positive and negative inputs
/// link to.
fn comfyui(graph: &Value) -> Option<Taken> {
    let nodes = graph.as_object()?;
    let mut ids: Vec<&String> = nodes.keys().collect();
    ids.sort_by_key(|id| id.parse::<u64>().unwrap_or(u64::MAX));
    let sampler = ids.iter().map(|id| &nodes[*id]).find(|n| {
        n["class_type"]
            .as_str()
            .is_some_and(|c| c.starts_with("KSampler"))
    })?;
    let inputs = &sampler["inputs"];
    let text_of = |link: &Value| {
        let id = link.get(0)?.as_str()?;
        nodes.get(id)?["inputs"]["text"].as_str().map(String::from)
    };
    let mut t = Taken::default();
    if let Some(text) = text_of(&inputs["positive"]) {
        t.prompt(&text);
    }
    if let Some(text) = text_of(&inputs["negative"]) {
        t.negative(&text);
    }
    t.seed(inputs["seed"].as_i64().or(inputs["noise_seed"].as_i64()));
    t.steps(inputs["steps"].as_u64());
    t.cfg(inputs["cfg"].as_f64());
    if let Some(name) = inputs["sampler_name"].as_str() {
        t.sampler(name);
    }
    if let Some(name) = inputs["scheduler"].as_str() {
        t.schedule(name);
    }
    t.denoise(inputs["denoise"].as_f64());
    Some(t)
}

/// InvokeAI's `Dream`: `"prompt" -s steps -S seed -C cfg -A sampler -f strength …`.
fn invokeai(dream: &str) -> Option<Taken> {
    let dream = dream.trim();
    let (prompt, rest) = match dream.strip_prefix('"') {
        Some(quoted) => quoted.split_once('"')?,
        None => (dream, ""),
    };
    let mut t = Taken::default();
    t.prompt(prompt);
    let args: Vec<&str> = rest.split_whitespace().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1).copied())
    };
    t.steps(value("-s").and_then(|v| v.parse().ok()));
    t.seed(value("-S").and_then(|v| v.parse().ok()));
    t.cfg(value("-C").and_then(|v| v.parse().ok()));
    if let Some(name) = value("-A") {
        t.sampler(name);
    }
    t.denoise(value("-f").and_then(|v| v.parse().ok()));
    Some(t)
}

/// NovelAI: the prompt in `Description`, the rest as JSON in `Comment`.
fn novelai(prompt: &str, comment: &str) -> Option<Taken> {
    let json: Value = serde_json::from_str(comment).ok()?;
    let mut t = Taken::default();
    t.prompt(prompt);
    if let Some(uc) = json["uc"].as_str() {
        t.negative(uc);
    }
    t.seed(json["seed"].as_i64());
    t.steps(json["steps"].as_u64());
    t.cfg(json["scale"].as_f64());
    if let Some(name) = json["sampler"].as_str() {
        t.sampler(name);
    }
    t.denoise(json["strength"].as_f64());
    Some(t)
}
