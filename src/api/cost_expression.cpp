#include "api/cost_expression.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

namespace loadstar::api {

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
    if (pos_ >= text_.size())
      return fail("expected a number, a variable or '(' but the text ended");
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
    : text_("input_tokens + output_tokens"), program_{{Op::kInput}, {Op::kOutput}, {Op::kAdd}} {}

Result<CostExpression> CostExpression::parse(std::string_view text) {
  CostExpression e;
  e.text_ = std::string(text);
  e.program_.clear();
  LS_RETURN_IF_ERROR(CostParser(text).parse(e.program_));
  // evaluate() runs on a fixed stack; the nesting limit keeps programs within it.
  size_t depth = 0, deepest = 0;
  for (const Op& op : e.program_) {
    if (op.kind <= Op::kTotal)
      deepest = std::max(deepest, ++depth);
    else if (op.kind != Op::kNeg)
      --depth;
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
  // Negative, NaN and infinite results (absurd constants) cost nothing.
  return top == 1 && std::isfinite(stack[0]) && stack[0] > 0 ? stack[0] : 0;
}

}  // namespace loadstar::api
