// Issue 14: a translation unit pays only for what it uses. This file includes everything and
// uses nothing, so its object must hold (almost) no code: every coroutine and every function
// that starts one is a template, instantiated only where it is called. The ctest
// compile_cost.umbrella_emits_no_code checks the object's size; benchmarks/compile_cost
// measures the time.
#include <pidring/pidring.hpp>

int main() { return 0; }
