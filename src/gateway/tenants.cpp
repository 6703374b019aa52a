#include "gateway/tenants.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include <fmt/format.h>

#include "common/digest.h"

namespace loadstar::gateway {

// ---------------------------------------------------------------- cost

namespace {

// Recursive descent: expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*;
// unary := '-' unary | primary; primary := number | variable | '(' expr ')'.
class CostParser {
 public:
  explicit CostParser(std::string_view text) : text_(text) {}

  Status parse(std::vector<CostExpression::Op>& out) {
    out_ = &out;
    LS_RETURN_IF_ERROR(expr(0));
    skip_space();
    if (pos_ < text_.size())
      return fail(fmt::format("unexpected '{}' after a complete expression", text_[pos_]));
    return ok_status();
  }

 private:
  using Op = CostExpression::Op;
  static constexpr int kMaxDepth = 64;

  Error fail(std::string message) const {
    return Error{ErrorCode::kInvalidArgument,
                 fmt::format("column {}: {}", pos_ + 1, std::move(message))};
  }
  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool eat(char c) {
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  Status expr(int depth) {
    if (depth > kMaxDepth) return fail("expression nested too deeply");
    LS_RETURN_IF_ERROR(term(depth));
    for (;;) {
      if (eat('+')) {
        LS_RETURN_IF_ERROR(term(depth));
        out_->push_back({Op::kAdd});
      } else if (eat('-')) {
        LS_RETURN_IF_ERROR(term(depth));
        out_->push_back({Op::kSub});
      } else {
        return ok_status();
      }
    }
  }
  Status term(int depth) {
    LS_RETURN_IF_ERROR(unary(depth));
    for (;;) {
      if (eat('*')) {
        LS_RETURN_IF_ERROR(unary(depth));
        out_->push_back({Op::kMul});
      } else if (eat('/')) {
        LS_RETURN_IF_ERROR(unary(depth));
        out_->push_back({Op::kDiv});
      } else {
        return ok_status();
      }
    }
  }
  Status unary(int depth) {
    if (depth > kMaxDepth) return fail("expression nested too deeply");
    if (eat('-')) {
      LS_RETURN_IF_ERROR(unary(depth + 1));
      out_->push_back({Op::kNeg});
      return ok_status();
    }
    return primary(depth);
  }
  Status primary(int depth) {
    skip_space();
    if (pos_ >= text_.size()) return fail("expected a number, a variable or '(' but the text ended");
    const char c = text_[pos_];
    if (c == '(') {
      ++pos_;
      LS_RETURN_IF_ERROR(expr(depth + 1));
      if (!eat(')')) return fail("expected ')'");
      return ok_status();
    }
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') {
      size_t end = pos_;
      while (end < text_.size() &&
             (std::isdigit(static_cast<unsigned char>(text_[end])) || text_[end] == '.'))
        ++end;
      const std::string digits(text_.substr(pos_, end - pos_));
      char* stop = nullptr;
      const double v = std::strtod(digits.c_str(), &stop);
      if (stop != digits.c_str() + digits.size() || !std::isfinite(v))
        return fail(fmt::format("'{}' is not a number", digits));
      out_->push_back({Op::kNumber, v});
      pos_ = end;
      return ok_status();
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t end = pos_;
      while (end < text_.size() &&
             (std::isalnum(static_cast<unsigned char>(text_[end])) || text_[end] == '_'))
        ++end;
      const std::string_view name = text_.substr(pos_, end - pos_);
      Op::Kind kind;
      if (name == "input_tokens")
        kind = Op::kInput;
      else if (name == "output_tokens")
        kind = Op::kOutput;
      else if (name == "total_tokens")
        kind = Op::kTotal;
      else
        return fail(fmt::format(
            "unknown variable '{}' (use input_tokens, output_tokens or total_tokens)", name));
      out_->push_back({kind});
      pos_ = end;
      return ok_status();
    }
    return fail(fmt::format("expected a number, a variable or '(' but found '{}'", c));
  }

  std::string_view text_;
  size_t pos_ = 0;
  std::vector<Op>* out_ = nullptr;
};

}  // namespace

CostExpression::CostExpression()
    : text_("input_tokens + output_tokens"),
      program_{{Op::kInput}, {Op::kOutput}, {Op::kAdd}} {}

Result<CostExpression> CostExpression::parse(std::string_view text) {
  CostExpression e;
  e.text_ = std::string(text);
  e.program_.clear();
  LS_RETURN_IF_ERROR(CostParser(text).parse(e.program_));
  // evaluate() runs on a fixed stack; the nesting limit keeps programs within it.
  size_t depth = 0, deepest = 0;
  for (const Op& op : e.program_) {
    if (op.kind <= Op::kTotal) deepest = std::max(deepest, ++depth);
    else if (op.kind != Op::kNeg) --depth;
  }
  if (deepest > kStackDepth)
    return Error{ErrorCode::kInvalidArgument, "the expression is too deeply nested"};
  return e;
}

double CostExpression::evaluate(double input, double output) const {
  double stack[kStackDepth];
  size_t top = 0;
  for (const Op& op : program_) {
    switch (op.kind) {
      case Op::kNumber:
        stack[top++] = op.number;
        break;
      case Op::kInput:
        stack[top++] = input;
        break;
      case Op::kOutput:
        stack[top++] = output;
        break;
      case Op::kTotal:
        stack[top++] = input + output;
        break;
      case Op::kNeg:
        stack[top - 1] = -stack[top - 1];
        break;
      default: {
        const double b = stack[--top];
        double& a = stack[top - 1];
        if (op.kind == Op::kAdd) a += b;
        if (op.kind == Op::kSub) a -= b;
        if (op.kind == Op::kMul) a *= b;
        if (op.kind == Op::kDiv) a = b == 0 ? 0 : a / b;
      }
    }
  }
  return top == 1 ? std::max(0.0, stack[0]) : 0;
}

// ---------------------------------------------------------------- limiter

void TenantLimiter::Bucket::refill(double now_s) {
  if (capacity <= 0) return;
  if (now_s > updated_s) level = std::min(capacity, level + (now_s - updated_s) * rate());
  updated_s = std::max(updated_s, now_s);
}

TenantLimiter::TenantLimiter(std::string name, TenantLimits limits, CostExpression cost)
    : name_(std::move(name)) {
  configure(limits, std::move(cost));
}

void TenantLimiter::configure(TenantLimits limits, CostExpression cost) {
  std::lock_guard lock(mu_);
  auto resize = [](Bucket& b, std::optional<double> limit) {
    const double capacity = limit.value_or(0);
    if (b.capacity == 0) {
      b.level = capacity;  // a new bucket starts full
    } else {
      b.level = std::min(capacity, b.level - (b.capacity - capacity));  // keep what was used
    }
    b.capacity = capacity;
  };
  resize(requests_, limits.requests_per_minute);
  resize(tokens_, limits.tokens_per_minute);
  limits_ = limits;
  cost_ = std::move(cost);
}

double TenantLimiter::cost(double input_tokens, double output_tokens) const {
  std::lock_guard lock(mu_);
  return cost_.evaluate(input_tokens, output_tokens);
}

RateLimitState TenantLimiter::state_locked() const {
  RateLimitState s;
  if (limits_.requests_per_minute) {
    s.limit_requests = requests_.capacity;
    s.remaining_requests = std::max(0.0, std::floor(requests_.level));
    s.reset_requests_s = requests_.reset_s();
  }
  if (limits_.tokens_per_minute) {
    s.limit_tokens = tokens_.capacity;
    s.remaining_tokens = std::max(0.0, std::floor(tokens_.level));
    s.reset_tokens_s = tokens_.reset_s();
  }
  return s;
}

TenantLimiter::Decision TenantLimiter::admit(double now_s, double estimated_cost) {
  std::lock_guard lock(mu_);
  requests_.refill(now_s);
  tokens_.refill(now_s);
  Decision d;
  if (limits_.max_concurrent && in_flight_ >= *limits_.max_concurrent) {
    d.reason = fmt::format("concurrent requests ({} allowed)", *limits_.max_concurrent);
    d.retry_after_s = 1;
  } else if (limits_.requests_per_minute && requests_.level < 1) {
    d.reason = fmt::format("requests per minute ({})", *limits_.requests_per_minute);
    d.retry_after_s = (1 - requests_.level) / requests_.rate();
  } else if (limits_.tokens_per_minute && tokens_.level <= 0) {
    d.reason = fmt::format("tokens per minute ({})", *limits_.tokens_per_minute);
    d.retry_after_s = (1e-9 - tokens_.level) / tokens_.rate();
  } else {
    d.admitted = true;
    ++in_flight_;
    if (limits_.requests_per_minute) requests_.level -= 1;
    if (limits_.tokens_per_minute) tokens_.level -= estimated_cost;
  }
  d.state = state_locked();
  return d;
}

void TenantLimiter::finish(double now_s, double estimated_cost, double actual_cost) {
  std::lock_guard lock(mu_);
  if (in_flight_ > 0) --in_flight_;
  tokens_.refill(now_s);
  if (limits_.tokens_per_minute)
    tokens_.level = std::min(tokens_.capacity, tokens_.level + estimated_cost - actual_cost);
}

RateLimitState TenantLimiter::state(double now_s) {
  std::lock_guard lock(mu_);
  requests_.refill(now_s);
  tokens_.refill(now_s);
  return state_locked();
}

uint32_t TenantLimiter::in_flight() const {
  std::lock_guard lock(mu_);
  return in_flight_;
}

// ---------------------------------------------------------------- keys

void TenantDirectory::add(std::shared_ptr<TenantLimiter> tenant, const std::vector<Key>& keys) {
  for (const Key& k : keys) by_digest_[k.sha256] = Entry{tenant, k.name, k.revoked};
  tenants_.push_back(std::move(tenant));
}

std::string_view bearer_token(std::string_view authorization) {
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.size() <= kBearer.size()) return {};
  for (size_t i = 0; i < kBearer.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) !=
        std::tolower(static_cast<unsigned char>(kBearer[i])))
      return {};
  std::string_view token = authorization.substr(kBearer.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  return token;
}

TenantDirectory::Lookup TenantDirectory::find(std::string_view authorization) const {
  const std::string_view key = bearer_token(authorization);
  if (key.empty()) return {};
  auto it = by_digest_.find(sha256_hex(key));
  if (it == by_digest_.end()) return {};
  if (it->second.revoked) return {nullptr, true, it->second.key_name};
  return {it->second.tenant.get(), false, it->second.key_name};
}

int64_t retry_after_seconds(double seconds) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(seconds)));
}

std::string reset_duration(double seconds) {
  if (seconds < 1) return fmt::format("{}ms", static_cast<int64_t>(std::ceil(seconds * 1000)));
  const auto whole = static_cast<int64_t>(std::ceil(seconds));
  if (whole < 60) return fmt::format("{}s", whole);
  return fmt::format("{}m{}s", whole / 60, whole % 60);
}

}  // namespace loadstar::gateway
