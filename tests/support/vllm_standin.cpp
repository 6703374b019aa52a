// A stand-in `vllm` for the test kubelet: it parses `vllm serve` arguments
// as strictly as vLLM v0.11.0's own parser does — every flag of that
// release (vllm-0.11.0-serve-flags.tsv, taken from its
// vllm/engine/arg_utils.py and vllm/entrypoints/openai/cli_args.py), value
// or switch, `--no-` forms of BooleanOptionalAction flags, `--x=y`,
// underscores read as dashes, unique prefixes, short aliases (-tp 2, -O3),
// choices and integer types — and exits 2 with argparse's message on
// anything else. Then it serves with engine-sim (what this machine can
// run), from the flags the two share. It stands in for the image's `vllm`,
// so that a Pod spec Loadstar writes for vLLM is checked by vLLM's rules.
//
//   vllm serve MODEL [flags]     ($LOADSTAR_BIN, else the build's, runs engine-sim)
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Flag {
  std::string name;   // --long-name
  std::string kind;   // value, bool, boolopt
  std::string nargs;  // "", "+", "?"
  std::string type;   // int, str, json, ...
  std::set<std::string> choices;
};

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "usage: vllm serve [model_tag] [options]\nvllm serve: error: %s\n",
               message.c_str());
  std::exit(2);
}

std::vector<Flag> load_flags(std::map<std::string, std::string>& aliases) {
  std::ifstream in(VLLM_FLAGS_FILE);
  if (!in) {
    std::fprintf(stderr, "vllm stand-in: cannot read %s\n", VLLM_FLAGS_FILE);
    std::exit(1);
  }
  std::vector<Flag> out;
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> cols;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, '\t');) cols.push_back(c);
    if (cols.size() < 2 || !cols[0].starts_with("--")) continue;
    Flag f{cols[0], cols[1], "", "", {}};
    for (size_t i = 2; i < cols.size(); ++i) {
      const std::string& c = cols[i];
      if (c.starts_with("nargs=")) f.nargs = c.substr(6);
      if (c.starts_with("type=")) f.type = c.substr(5);
      if (c.starts_with("aliases="))
        for (std::stringstream a(c.substr(8)); std::getline(a, line, ',');) aliases[line] = f.name;
      if (c.starts_with("choices="))
        for (std::stringstream a(c.substr(8)); std::getline(a, line, '|');) f.choices.insert(line);
      if (c.starts_with("neg=")) aliases[c.substr(4)] = "!" + f.name;
    }
    out.push_back(std::move(f));
  }
  return out;
}

bool is_int(const std::string& s) {
  if (s.empty()) return false;
  size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] != "serve") fail("this stand-in implements only `vllm serve`");
  std::map<std::string, std::string> aliases;  // alias or --no-X -> flag ("!" = negated)
  const std::vector<Flag> flags = load_flags(aliases);
  std::map<std::string, const Flag*> by_name;
  for (const auto& f : flags) by_name[f.name] = &f;

  std::optional<std::string> model;
  std::map<std::string, std::vector<std::string>> values;  // flag -> its values
  std::map<std::string, bool> switches;
  for (size_t i = 1; i < args.size(); ++i) {
    std::string token = args[i];
    if (!token.starts_with("-") || token == "-") {
      if (model) fail("unrecognized arguments: " + token);
      model = token;
      continue;
    }
    std::optional<std::string> attached;
    if (token.starts_with("--")) {
      if (auto eq = token.find('='); eq != std::string::npos) {
        attached = token.substr(eq + 1);
        token.resize(eq);
      }
      for (char& c : token)
        if (c == '_') c = '-';
    } else if (!aliases.count(token)) {
      // A short alias with its value attached (-O3, -tp2).
      for (size_t n = token.size() - 1; n >= 2 && !attached; --n)
        if (aliases.count(token.substr(0, n))) {
          attached = token.substr(n);
          token.resize(n);
        }
    }
    std::string name = token;
    bool negated = false;
    if (auto a = aliases.find(token); a != aliases.end()) {
      name = a->second;
      if (name.starts_with("!")) {
        negated = true;
        name = name.substr(1);
      }
    } else if (!by_name.count(token)) {
      // argparse's allow_abbrev: a unique prefix of one long flag.
      std::vector<std::string> matches;
      for (const auto& f : flags)
        if (f.name.starts_with(token)) matches.push_back(f.name);
      for (const auto& [alias, target] : aliases)
        if (alias.starts_with("--") && alias.starts_with(token)) matches.push_back(alias);
      if (matches.size() != 1) {
        if (matches.empty()) fail("unrecognized arguments: " + args[i]);
        std::string list;
        for (const auto& m : matches) list += (list.empty() ? "" : ", ") + m;
        fail("ambiguous option: " + token + " could match " + list);
      }
      name = matches[0];
      if (auto a = aliases.find(name); a != aliases.end()) {
        negated = a->second.starts_with("!");
        name = negated ? a->second.substr(1) : a->second;
      }
    }
    const Flag& f = *by_name.at(name);
    if (f.name == "--model")
      fail(
          "With `vllm serve`, you should provide the model as a positional argument or in a "
          "config file instead of via the `--model` option.");
    if (f.kind == "bool" || f.kind == "boolopt") {
      if (attached) fail("argument " + f.name + ": ignored explicit argument '" + *attached + "'");
      switches[f.name] = !negated;
      continue;
    }
    std::vector<std::string>& v = values[f.name];
    v.clear();
    if (attached) {
      v.push_back(*attached);
    } else {
      while (i + 1 < args.size() && (!args[i + 1].starts_with("-") || is_int(args[i + 1]))) {
        v.push_back(args[++i]);
        if (f.nargs != "+") break;
      }
    }
    if (v.empty() && f.nargs != "?") fail("argument " + f.name + ": expected one argument");
    for (const auto& value : v) {
      if (f.type == "int" && !is_int(value))
        fail("argument " + f.name + ": invalid int value: '" + value + "'");
      if (!f.choices.empty() && !f.choices.count(value))
        fail("argument " + f.name + ": invalid choice: '" + value + "'");
    }
  }
  if (!model) fail("the model (model_tag) is required");

  // Serve with engine-sim, from what the two share.
  const char* bin = std::getenv("LOADSTAR_BIN");
  std::vector<std::string> sim = {bin && *bin ? bin : LOADSTAR_BIN_PATH, "engine-sim", "--model",
                                  *model};
  auto pass = [&](const char* flag, const char* as) {
    if (auto it = values.find(flag); it != values.end() && !it->second.empty()) {
      sim.push_back(as);
      sim.push_back(it->second.front());
    }
  };
  pass("--served-model-name", "--served-model-name");
  pass("--host", "--host");
  pass("--port", "--port");
  pass("--max-model-len", "--max-model-len");
  pass("--max-num-seqs", "--max-num-seqs");
  if (auto it = switches.find("--enable-prefix-caching"); it != switches.end())
    sim.push_back(it->second ? "--enable-prefix-caching" : "--no-enable-prefix-caching");
  std::vector<char*> c_args;
  for (auto& s : sim) c_args.push_back(s.data());
  c_args.push_back(nullptr);
  ::execvp(c_args[0], c_args.data());
  std::perror("vllm stand-in: exec loadstar engine-sim");
  return 1;
}
