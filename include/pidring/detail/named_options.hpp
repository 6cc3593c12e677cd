#pragma once
// g++ 12 miscompiles an aggregate made inside a co_await expression (a designated or braced
// initializer, or Type{...}): the object is relocated bitwise into the coroutine frame, so a
// short std::string in it still points into the old place, and `co_await run(io, cmd,
// {.input = "x"})` aborts with "free(): invalid pointer". A class with a constructor (such as
// pidring::command) and a named object are fine. No overload can tell `{.input = "x"}` or
// `run_options{...}` from `std::move(o)`, so on that compiler every front end that takes options
// refuses them as rvalues, with a message that says what to write; elsewhere (clang, g++ 13+)
// rvalues are moved in as usual.

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#define PIDRING_NAMED_OPTIONS_ONLY 1
#endif

// The message of the refusal, for an options type and a function: name the options first.
#define PIDRING_NAME_THE_OPTIONS(type, call)                                                        \
  "g++ 12 miscompiles a pidring::" type " made inside a co_await expression (a run-time"         \
  " crash: free(): invalid pointer), so on g++ 12 " call " takes its " type " by name only."      \
  " Write `pidring::" type " o; o.field = value; ... " call "(..., o)` instead of a braced"        \
  " initializer, pidring::" type "{...} or std::move(o). Clang and g++ 13 take all three."

namespace pidring::detail {

// False, but only once a template is instantiated: the refusals fire where they are called.
template <class>
inline constexpr bool named_options_only = false;

}  // namespace pidring::detail
