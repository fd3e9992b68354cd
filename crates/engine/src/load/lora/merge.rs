//! Merging LoRAs into a model's weights as they load: `W' = W + Σ weight · alpha/rank · up·down`.
//!
//! A [`candle_nn::var_builder::SimpleBackend`] wraps the var builder a component loads from
//! and adds the updates when a changed weight is fetched (in f32, then cast to the model's
//! dtype). Nothing is kept unmerged: changing the LoRA set reloads the model, which costs a
//! load but no second copy of the weights.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::load::checkpoint::LdmUnetLayout;
use crate::load::lora::file::{Component, LoraFile, LoraModule};
use crate::load::lora::names::{Lookup, NameIndex, Translate};
use crate::load::lora::spec::LoraSpec;
use loopback_core::{Error, Result};

/// The LoRAs to merge into one model, read and checked.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    loras: Vec<(LoraSpec, Arc<LoraFile>)>,
}

/// One update of a weight: the module, its multiplier, and the LoRA it came from.
#[derive(Debug, Clone)]
struct Update {
    module: LoraModule,
    multiplier: f64,
    source: String,
}

/// The var-builder backend that adds LoRA updates to the weights it returns.
struct Merged {
    base: VarBuilder<'static>,
    updates: HashMap<String, Vec<Update>>,
}

impl Merged {
    /// `base` (f32) plus every update of `name`, in `dtype`.
    fn merge(&self, name: &str, base: Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        let Some(updates) = self.updates.get(name) else {
            return base.to_dtype(dtype);
        };
        let mut merged = base;
        for update in updates {
            let delta = update.module.delta(update.multiplier)?;
            if delta.elem_count() != merged.elem_count() {
                candle_core::bail!(
                    "LoRA shape mismatch: {} changes {name} by {:?}, the weight is {:?}",
                    update.source,
                    delta.dims(),
                    merged.dims()
                );
            }
            let delta = delta.reshape(merged.shape())?.to_device(merged.device())?;
            merged = (merged + delta)?;
        }
        merged.to_dtype(dtype)
    }
}

impl SimpleBackend for Merged {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if !self.updates.contains_key(name) {
            return self
                .base
                .get_with_hints_dtype(s, name, h, dtype)?
                .to_device(dev);
        }
        let base = self.base.get_with_hints_dtype(s, name, h, DType::F32)?;
        self.merge(name, base, dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if !self.updates.contains_key(name) {
            return self.base.get_unchecked_dtype(name, dtype)?.to_device(dev);
        }
        let base = self.base.get_unchecked_dtype(name, DType::F32)?;
        self.merge(name, base, dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.base.contains_tensor(name)
    }
}

/// How many unmatched module names an error lists.
const LISTED: usize = 3;

impl LoraSet {
    /// Reads every LoRA of `specs` (errors name the file).
    pub fn read(specs: &[LoraSpec]) -> Result<Self> {
        let mut loras = Vec::with_capacity(specs.len());
        for spec in specs {
            if !spec.weight.is_finite() {
                return Err(Error::input(
                    &spec.path,
                    "the LoRA weight must be a finite number",
                ));
            }
            loras.push((spec.clone(), Arc::new(LoraFile::read(&spec.path)?)));
        }
        Ok(LoraSet { loras })
    }

    /// No LoRA to merge.
    pub fn is_empty(&self) -> bool {
        self.loras.is_empty()
    }

    /// The LoRAs, as given.
    pub fn specs(&self) -> impl Iterator<Item = &LoraSpec> {
        self.loras.iter().map(|(spec, _)| spec)
    }

    /// Fails when a LoRA changes a component the model does not have (`present`), e.g. an
    /// SDXL LoRA's second text encoder on an SD 1.5 model.
    pub fn check_components(&self, present: &[Component]) -> Result<()> {
        for (spec, file) in &self.loras {
            if let Some(missing) = file.components().into_iter().find(|c| !present.contains(c)) {
                return Err(Error::input(
                    &spec.path,
                    format!(
                        "this LoRA changes a {} that this model does not have (a LoRA for \
                         another model family?)",
                        missing.label()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `vb` with this set's updates of `component` added to the weights it returns. `names`
    /// are the component's weight names in the layout the LoRAs' module names follow, and
    /// `translate` maps them to the names the model fetches ([`crate::load::lora::names::same_layout`]
    /// for diffusers-layout models and SD 1.x/2.x LoRAs). A LoRA module that matches no weight
    /// is an error naming the LoRA file and a few such modules.
    pub fn wrap<'n>(
        &self,
        component: Component,
        vb: VarBuilder<'static>,
        names: impl IntoIterator<Item = &'n str>,
        translate: Translate<'_>,
    ) -> Result<VarBuilder<'static>> {
        if !self.changes(component) {
            return Ok(vb);
        }
        let index = NameIndex::new(names, translate);
        let mut updates: HashMap<String, Vec<Update>> = HashMap::new();
        for (spec, file) in &self.loras {
            let mut unmatched = Vec::new();
            for ((c, module), parts) in &file.modules {
                if *c != component {
                    continue;
                }
                match index.lookup(module) {
                    Lookup::Found(name) => updates.entry(name).or_default().push(Update {
                        module: parts.clone(),
                        multiplier: spec.weight,
                        source: spec.name(),
                    }),
                    Lookup::Ambiguous => unmatched.push(format!("{module} (ambiguous)")),
                    Lookup::Missing => unmatched.push(module.clone()),
                }
            }
            if !unmatched.is_empty() {
                let more = unmatched.len().saturating_sub(LISTED);
                unmatched.truncate(LISTED);
                let mut list = unmatched.join(", ");
                if more > 0 {
                    list.push_str(&format!(" and {more} more"));
                }
                return Err(Error::input(
                    &spec.path,
                    format!(
                        "LoRA modules that match no weight of the model's {}: {list} (a LoRA for \
                         another model family?)",
                        component.label()
                    ),
                ));
            }
        }
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let merged = Merged { base: vb, updates };
        Ok(VarBuilder::from_backend(Box::new(merged), dtype, device))
    }

    /// [`LoraSet::wrap`] for a component loaded from the diffusers-layout safetensors file
    /// `path` (its weight names are read from the file's header only when a LoRA changes the
    /// component).
    pub fn wrap_file(
        &self,
        component: Component,
        vb: VarBuilder<'static>,
        path: &std::path::Path,
    ) -> Result<VarBuilder<'static>> {
        if !self.changes(component) {
            return Ok(vb);
        }
        let names = crate::load::lora::names::safetensors_names(path)?;
        self.wrap(
            component,
            vb,
            names.iter().map(String::as_str),
            &crate::load::lora::names::same_layout,
        )
    }

    /// [`LoraSet::wrap`] for the UNet, whose weights the model fetches by the diffusers
    /// `names`. `sgm`: an SDXL UNet's block numbering, with which LoRA modules match in the
    /// original SGM layout (kohya's SDXL LoRAs) as well as in the diffusers one
    /// ([`crate::load::lora::names::sgm_aliases`]); `None` (SD 1.x/2.x): diffusers names only.
    pub fn wrap_unet(
        &self,
        vb: VarBuilder<'static>,
        names: &[String],
        sgm: Option<LdmUnetLayout>,
    ) -> Result<VarBuilder<'static>> {
        if !self.changes(Component::Unet) {
            return Ok(vb);
        }
        let Some(layout) = sgm else {
            return self.wrap(
                Component::Unet,
                vb,
                names.iter().map(String::as_str),
                &crate::load::lora::names::same_layout,
            );
        };
        let aliases = crate::load::lora::names::sgm_aliases(names, layout);
        self.wrap(
            Component::Unet,
            vb,
            aliases.keys().map(String::as_str),
            &|name| aliases.get(name).cloned(),
        )
    }

    /// Whether a LoRA of the set changes `component`.
    pub fn changes(&self, component: Component) -> bool {
        self.loras
            .iter()
            .any(|(_, f)| f.modules.keys().any(|(c, _)| *c == component))
    }
}
