//! Loading a model from a local folder of safetensors weights (`config.json`, `tokenizer.json`,
//! `tokenizer_config.json`, `*.safetensors`), the layout of a Hugging Face model repository.
//!
//! No such model can be fetched on a machine without hub access, so the test writes one: it
//! exports the default GGUF model into that layout (weights dequantized to F16 under their
//! Hugging Face names, the query and key rows put back in the order rotary embeddings expect
//! there, a `tokenizer.json` built from the GGUF vocabulary and merges, the chat template from the
//! GGUF metadata) and checks that the engine loads the folder through
//! [`ModelSource::parse`] and answers sensibly.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use llm_engine::{Engine, ModelSource};
use serde_json::{json, Map};

mod common;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The GGUF metadata of a llama model, read by key.
struct Metadata<'a>(&'a HashMap<String, Value>);

impl Metadata<'_> {
    fn get(&self, key: &str) -> Result<&Value, Failure> {
        self.0
            .get(key)
            .ok_or_else(|| format!("GGUF metadata has no `{key}`").into())
    }

    fn int(&self, key: &str) -> Result<usize, Failure> {
        let value = self.get(key)?;
        let int = value
            .to_u64()
            .map(i64::try_from)
            .or_else(|_| value.to_i32().map(|v| Ok(i64::from(v))))
            .or_else(|_| value.to_i64().map(Ok))??;
        Ok(usize::try_from(int)?)
    }

    fn float(&self, key: &str) -> Result<f64, Failure> {
        let value = self.get(key)?;
        Ok(value.to_f32().map(f64::from).or_else(|_| value.to_f64())?)
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, Failure> {
        self.get(key)?
            .to_vec()?
            .iter()
            .map(|value| Ok(value.to_string()?.clone()))
            .collect()
    }
}

/// Undoes the row order of llama's query and key weights in GGUF files, which interleave the two
/// halves of each head for the rotary embedding; Hugging Face weights keep the halves apart.
fn unpermute(weights: &Tensor, heads: usize) -> Result<Tensor, Failure> {
    let (rows, cols) = weights.dims2()?;
    let half = rows / heads / 2;
    Ok(weights
        .reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// The Hugging Face name of a GGUF llama tensor.
fn hf_name(gguf: &str) -> Result<String, Failure> {
    let name = match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".to_owned(),
        "output_norm.weight" => "model.norm.weight".to_owned(),
        "output.weight" => "lm_head.weight".to_owned(),
        _ => {
            let rest = gguf
                .strip_prefix("blk.")
                .ok_or_else(|| format!("unexpected tensor `{gguf}`"))?;
            let (layer, part) = rest
                .split_once('.')
                .ok_or_else(|| format!("unexpected tensor `{gguf}`"))?;
            let part = match part {
                "attn_norm.weight" => "input_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                other => return Err(format!("unexpected tensor part `{other}`").into()),
            };
            format!("model.layers.{layer}.{part}")
        }
    };
    Ok(name)
}

/// `tokenizer.json` for a GGUF `gpt2` (byte-level BPE) tokenizer, built the way mistral.rs reads
/// one from GGUF: the same pre-tokenizer split, byte-level decoding, and every token whose type is
/// not "normal" as a special token.
fn tokenizer_json(meta: &Metadata<'_>) -> Result<serde_json::Value, Failure> {
    let model = meta.get("tokenizer.ggml.model")?.to_string()?;
    if model != "gpt2" {
        return Err(format!("only byte-level BPE tokenizers are exported, not `{model}`").into());
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let types: Vec<i32> = meta
        .get("tokenizer.ggml.token_type")?
        .to_vec()?
        .iter()
        .map(Value::to_i32)
        .collect::<Result<_, _>>()?;
    let vocab: Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), json!(id)))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, kind))| **kind != 1)
        .map(|(id, (token, _))| {
            json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                    "behavior": "Isolated",
                    "invert": false
                },
                byte_level
            ]
        },
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    }))
}

/// Writes `gguf` (a llama model) as a Hugging Face model folder in `dir`.
fn export_llama(gguf: &Path, dir: &Path) -> Result<(), Failure> {
    let mut reader = BufReader::new(File::open(gguf)?);
    let content = Content::read(&mut reader)?;
    let meta = Metadata(&content.metadata);
    let heads = meta.int("llama.attention.head_count")?;
    let kv_heads = meta.int("llama.attention.head_count_kv")?;
    let tokens = meta.strings("tokenizer.ggml.tokens")?;

    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let weights = content
            .tensor(&mut reader, name, &Device::Cpu)?
            .dequantize(&Device::Cpu)?;
        let weights = if name.ends_with("attn_q.weight") {
            unpermute(&weights, heads)?
        } else if name.ends_with("attn_k.weight") {
            unpermute(&weights, kv_heads)?
        } else {
            weights
        };
        tensors.insert(hf_name(name)?, weights.to_dtype(DType::F16)?);
    }
    let tied = !tensors.contains_key("lm_head.weight");
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;

    let bos = meta.int("tokenizer.ggml.bos_token_id")?;
    let eos = meta.int("tokenizer.ggml.eos_token_id")?;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": meta.int("llama.embedding_length")?,
        "intermediate_size": meta.int("llama.feed_forward_length")?,
        "num_hidden_layers": meta.int("llama.block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": meta.float("llama.attention.layer_norm_rms_epsilon")?,
        "rope_theta": meta.float("llama.rope.freq_base").unwrap_or(10_000.0),
        "max_position_embeddings": meta.int("llama.context_length")?,
        "vocab_size": tokens.len(),
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float16"
    });
    let tokenizer_config = json!({
        "chat_template": meta.get("tokenizer.chat_template")?.to_string()?,
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false
    });
    let generation_config = json!({"bos_token_id": bos, "eos_token_id": eos});
    let write = |file: &str, value: &serde_json::Value| {
        std::fs::write(dir.join(file), serde_json::to_vec_pretty(value)?).map_err(Failure::from)
    };
    write("config.json", &config)?;
    write("tokenizer.json", &tokenizer_json(&meta)?)?;
    write("tokenizer_config.json", &tokenizer_config)?;
    write("generation_config.json", &generation_config)?;
    Ok(())
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("llm-engine-safetensors-{}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_safetensors_folder_loads_and_answers() {
    let gguf = llm_engine::ensure_default_model(&llm_engine::default_cache_dir())
        .expect("the default model is available");
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || export_llama(&gguf, &dir)
    })
    .await
    .expect("export task")
    .expect("the default model exports to safetensors");

    let source = ModelSource::parse(dir.to_str().expect("utf-8 path")).expect("a model folder");
    assert_eq!(source, ModelSource::Safetensors(dir.clone()));
    let engine = Engine::builder()
        .model(source)
        .build()
        .await
        .expect("the safetensors folder loads");
    let answer = common::answers_sensibly(&engine).await;
    // The chat template came from tokenizer_config.json: the prompt is the ChatML one the GGUF
    // model gets, default system prompt included, not the bare question (8 tokens).
    assert!(
        answer.finish.usage.prompt_tokens > 20,
        "prompt tokens {}",
        answer.finish.usage.prompt_tokens
    );
    drop(engine);
    std::fs::remove_dir_all(&dir).expect("clean up");
}
