#pragma once
/// @file
/// The umbrella header: every public pidring header.

#include <pidring/cgroup.hpp>
#include <pidring/child.hpp>
#include <pidring/copy.hpp>
#include <pidring/error.hpp>
#include <pidring/exit_status.hpp>
#include <pidring/io_context.hpp>
#include <pidring/pipeline.hpp>
#include <pidring/pipe.hpp>
#include <pidring/poll_fd.hpp>
#include <pidring/resource_usage.hpp>
#include <pidring/run.hpp>
#include <pidring/spawn.hpp>
#include <pidring/task.hpp>
#include <pidring/this_process.hpp>
#include <pidring/version.hpp>
#include <pidring/when_all.hpp>
