#include <memory>

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include "app/commands.h"
#include "common/units.h"
#include "model/gguf.h"
#include "model/lora_adapter.h"
#include "model/model_dir.h"

namespace loadstar::app {

std::function<int()> setup_model(CLI::App& app) {
  app.require_subcommand(1);
  struct Args {
    std::string size = "2GiB";
    std::string shard_size = "512MiB";
    std::string output;
    std::string name = "synthetic-llama";
    uint32_t max_position_embeddings = 4096;
    uint64_t seed = 1;
    std::string format = "safetensors";
    std::string vocab = "llama-bpe";
    std::string inspect_dir;
    std::string lora_of;
    uint32_t rank = 8;
  };
  auto args = std::make_shared<Args>();
  CLI::App* synth = app.add_subcommand(
      "synth",
      "Write a synthetic Llama-shaped model with seeded random weights (safetensors or GGUF)");
  synth->add_option("--size", args->size, "Total weight bytes, e.g. 2GiB")->capture_default_str();
  synth->add_option("--shard-size", args->shard_size, "Largest shard")->capture_default_str();
  synth
      ->add_option("-o,--output", args->output,
                   "Directory to create (safetensors) or .gguf file to write (gguf)")
      ->required();
  synth->add_option("--format", args->format, "safetensors, or gguf (for llama.cpp)")
      ->check(CLI::IsMember({"safetensors", "gguf"}))
      ->capture_default_str();
  synth
      ->add_option("--vocab", args->vocab,
                   "gguf: the tokenizer, a llama.cpp vocabulary name (llama-bpe, qwen2, ...) or "
                   "a ggml-vocab-*.gguf file")
      ->capture_default_str();
  synth->add_option("--name", args->name)->capture_default_str();
  synth->add_option("--max-position-embeddings", args->max_position_embeddings)
      ->capture_default_str();
  synth->add_option("--seed", args->seed)->capture_default_str();
  synth->add_option("--lora-of", args->lora_of,
                    "Write a LoRA adapter of this base model instead of a model: of a model "
                    "directory, a PEFT directory (q_proj and v_proj); of a .gguf file with "
                    "--format gguf, a llama.cpp adapter file (attn_q and attn_v)");
  synth->add_option("--rank", args->rank, "--lora-of: the adapter's rank")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  CLI::App* inspect =
      app.add_subcommand("inspect", "Validate a model directory and read all its weights");
  inspect->add_option("dir", args->inspect_dir)->required();
  return [args, synth, inspect]() -> int {
    if (synth->parsed() && !args->lora_of.empty()) {
      if (args->format == "gguf") {
        auto adapter = model::synth_gguf_adapter({.base = args->lora_of,
                                                  .output = args->output,
                                                  .rank = args->rank,
                                                  .seed = args->seed});
        if (!adapter.ok()) {
          fmt::print(stderr, "loadstar model synth: {}\n", adapter.error().message);
          return 1;
        }
        fmt::print("wrote {} (llama.cpp LoRA rank {}, {} tensors, {})\n", args->output,
                   adapter->rank, adapter->tensors, format_bytes(adapter->bytes));
        return 0;
      }
      auto base = model::read_model_config(args->lora_of);
      if (!base.ok()) {
        fmt::print(stderr, "loadstar model synth: --lora-of: {}\n", base.error().message);
        return 2;
      }
      auto adapter = model::synth_adapter({.output = args->output,
                                           .rank = args->rank,
                                           .hidden_size = base->hidden_size,
                                           .layers = base->num_hidden_layers,
                                           .base_model = args->lora_of,
                                           .seed = args->seed});
      if (!adapter.ok()) {
        fmt::print(stderr, "loadstar model synth: {}\n", adapter.error().message);
        return 1;
      }
      fmt::print("wrote {} (LoRA rank {}, {} tensors, {})\n", args->output, adapter->rank,
                 adapter->tensors, format_bytes(adapter->bytes));
      return 0;
    }
    if (synth->parsed()) {
      auto size = parse_bytes(args->size);
      auto shard = parse_bytes(args->shard_size);
      if (!size.ok() || !shard.ok()) {
        fmt::print(stderr, "loadstar model synth: {}\n",
                   (!size.ok() ? size : shard).error().message);
        return 2;
      }
      if (args->format == "gguf") {
        auto vocab = model::find_vocab(args->vocab);
        if (!vocab.ok()) {
          fmt::print(stderr, "loadstar model synth: --vocab: {}\n", vocab.error().message);
          return 2;
        }
        auto report = model::synth_gguf({.size_bytes = *size,
                                         .output = args->output,
                                         .vocab = *vocab,
                                         .name = args->name,
                                         .context_length = args->max_position_embeddings,
                                         .seed = args->seed});
        if (!report.ok()) {
          fmt::print(stderr, "loadstar model synth: {}\n", report.error().message);
          return 1;
        }
        fmt::print("wrote {} ({}, {} tensors; embedding {}, {} layers, {} heads, vocabulary {})\n",
                   args->output, format_bytes(report->bytes), report->tensors, report->embedding,
                   report->layers, report->heads, report->vocab);
        return 0;
      }
      model::SynthOptions options{
          *size, *shard, args->output, args->name, args->max_position_embeddings, args->seed};
      auto report = model::synth_model(options);
      if (!report.ok()) {
        fmt::print(stderr, "loadstar model synth: {}\n", report.error().message);
        return 1;
      }
      fmt::print("wrote {} ({} in {} shards, {} tensors; hidden {}, {} layers)\n", args->output,
                 format_bytes(report->bytes), report->shards, report->tensors,
                 report->config.hidden_size, report->config.num_hidden_layers);
      return 0;
    }
    if (inspect->parsed()) {
      auto config = model::read_model_config(args->inspect_dir);
      if (!config.ok()) {
        fmt::print(stderr, "loadstar model inspect: {}\n", config.error().message);
        return 1;
      }
      auto report = model::load_weights(args->inspect_dir);
      if (!report.ok()) {
        fmt::print(stderr, "loadstar model inspect: {}\n", report.error().message);
        return 1;
      }
      fmt::print("{}: {} ({} files, {} tensors, {}) read in {:.3f}s, xxh3 {:016x}\n",
                 args->inspect_dir, config->architecture, report->files, report->tensors,
                 format_bytes(report->bytes), report->seconds, report->checksum);
      return 0;
    }
    return 2;
  };
}

}  // namespace loadstar::app
