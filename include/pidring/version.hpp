#pragma once
/// @file
/// Version of the pidring headers.

#define PIDRING_VERSION_MAJOR 0
#define PIDRING_VERSION_MINOR 1
#define PIDRING_VERSION_PATCH 0
/// MAJOR * 10000 + MINOR * 100 + PATCH, for preprocessor comparisons.
#define PIDRING_VERSION (PIDRING_VERSION_MAJOR * 10000 + PIDRING_VERSION_MINOR * 100 + PIDRING_VERSION_PATCH)
#define PIDRING_VERSION_STRING "0.1.0"
