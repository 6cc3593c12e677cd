#pragma once
// pcp-mpi's share of the work between MPI ranks: a tree's walk result sent from rank 0 to the
// others, and the queue of its files that rank 0 serves. No copying here: each rank copies what
// the queue gives it with pidring's tree copy (pcp_mpi.cpp).
//
// Messages, all point to point with rank 0 except the one broadcast of the walk:
//   request  (rank r -> 0): r's state and progress; answered by
//   batch    (0 -> rank r): the entry indices r copies next (none: no more work for r)
//   done     (rank r -> 0): r's end: its state, files, bytes and seconds
// A rank asks for a batch when its own threads have nothing left, so a file costs 2/batch
// messages; batches are a share of what is left (guided scheduling), largest files first, so the
// first batches are single big files and the last ones many small ones.
//
// Blocking MPI calls spin (Open MPI polls its transports), which on a machine with fewer cores
// than ranks takes the CPU from the ranks that copy: every wait here is a test and a short sleep.
#include <mpi.h>

#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pcp::spread {

enum tag : int { request_tag = 1, batch_tag = 2, done_tag = 3 };

// A rank's state, as it reports it.
enum class state : std::uint64_t { ok = 0, failed = 1, stopped = 2 };

// Sleeps a little: the wait between two tests of a pending MPI operation.
inline void pause(unsigned& round) {
  // 20 us at first (a reply from a rank that is awake), up to 1 ms (a rank busy copying).
  const long ns = std::min<long>(20'000L << std::min(round, 6u), 1'000'000L);
  ++round;
  timespec t{0, ns};
  ::nanosleep(&t, nullptr);
}

// What a wait does if a stop comes while it waits: `run` once (rank 0 removes its hidden tree:
// a rank that died keeps the others waiting until mpirun kills them, a second or so later).
struct on_stop {
  std::stop_token stop;
  std::function<void()> run;
};

// Waits for `r` without spinning.
inline void wait(MPI_Request& r, on_stop* if_stopped = nullptr) {
  unsigned round = 0;
  for (int done = 0;;) {
    MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    if (done) return;
    if (if_stopped && if_stopped->run && if_stopped->stop.stop_requested()) std::exchange(if_stopped->run, nullptr)();
    pause(round);
  }
}

// Rank 0's bytes to every rank, in pieces an int can count.
inline void broadcast(std::vector<char>& bytes, int rank, on_stop* if_stopped = nullptr) {
  std::uint64_t size = bytes.size();
  MPI_Request r;
  MPI_Ibcast(&size, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD, &r);
  wait(r, if_stopped);
  if (rank != 0) bytes.resize(size);
  constexpr std::uint64_t piece = 1u << 30;
  for (std::uint64_t at = 0; at < size; at += piece) {
    MPI_Ibcast(bytes.data() + at, static_cast<int>(std::min(piece, size - at)), MPI_CHAR, 0, MPI_COMM_WORLD, &r);
    wait(r, if_stopped);
  }
}

// Flat bytes for a broadcast: integers as they are in memory (every rank runs this build on
// the same architecture), strings with their length first.
class writer {
 public:
  template <class T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const char* p = reinterpret_cast<const char*>(&v);
    out_.insert(out_.end(), p, p + sizeof v);
  }
  void put(const std::string& s) {
    put(static_cast<std::uint64_t>(s.size()));
    out_.insert(out_.end(), s.begin(), s.end());
  }
  std::vector<char>& bytes() { return out_; }

 private:
  std::vector<char> out_;
};

class reader {
 public:
  explicit reader(const std::vector<char>& in) : in_(&in) {}
  template <class T>
  void get(T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    std::memcpy(&v, in_->data() + at_, sizeof v);
    at_ += sizeof v;
  }
  void get(std::string& s) {
    std::uint64_t n = 0;
    get(n);
    s.assign(in_->data() + at_, n);
    at_ += n;
  }

 private:
  const std::vector<char>* in_;
  std::size_t at_ = 0;
};

// What a rank did, as its done message says and --report writes.
struct rank_result {
  state how = state::ok;
  std::uint64_t files = 0, bytes = 0, errors = 0;
  double seconds = 0;
};

// The request a rank sends: its state and progress so far (rank 0 draws the sum).
struct request {
  std::uint64_t how = 0, files = 0, bytes = 0;
};

// The queue on rank 0: a tree's units (files, or pieces of big ones), largest first, dealt out in batches
// to the other ranks (their requests, answered by serve()) and one at a time to rank 0's own
// threads (next()). Once the copy is abandoned (a rank failed or stopped, with `all_or_nothing`;
// a stop on rank 0) every request is answered with an empty batch.
class queue_server {
 public:
  // `order`: the units to deal, in order; `sizes`: their bytes, by unit.
  queue_server(std::vector<std::size_t> order, std::vector<std::uint64_t> sizes, int ranks, unsigned threads,
               bool all_or_nothing)
      : order_(order.begin(), order.end()), sizes_(std::move(sizes)), ranks_(ranks), threads_(std::max(threads, 1u)),
        all_or_nothing_(all_or_nothing), first_(static_cast<std::size_t>(ranks)), results_(static_cast<std::size_t>(ranks)),
        progress_(static_cast<std::size_t>(ranks)) {
    for (std::size_t i : order_) bytes_left_ += sizes_[i];
    // Each other rank's first batch is set aside now, so that a rank that starts late (ranks
    // outnumbering cores) still gets a share of a tree that rank 0 could copy alone meanwhile.
    for (int r = 1; r < ranks_; ++r) first_[static_cast<std::size_t>(r)] = take_batch();
  }

  // Rank 0's own threads: the next file, or none.
  bool next(std::size_t& index) {
    std::lock_guard lock(mutex_);
    if (abandoned_ || order_.empty()) return false;
    index = take_front();
    return true;
  }

  void abandon() { abandoned_.store(true); }
  // Rank 0's own threads have finished: serve() returns once the other ranks have too.
  void local_done() { local_done_.store(true); }
  bool abandoned() const { return abandoned_.load(); }

  // Answers requests until every other rank has said it is done and local_done() was called.
  // `tick` runs every 100 ms (progress); `stopped` true abandons the copy. Rank 0's serving thread.
  void serve(const std::function<void(const std::vector<request>&)>& tick, const std::function<bool()>& stopped) {
    int done = 0;
    unsigned round = 0;
    auto last_tick = std::chrono::steady_clock::now();
    while (done < ranks_ - 1 || !local_done_.load()) {
      if (stopped()) abandon();
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st);
      const auto now = std::chrono::steady_clock::now();
      if (now - last_tick >= std::chrono::milliseconds(100)) {
        last_tick = now;
        tick(progress_);
      }
      if (!flag) {
        pause(round);
        continue;
      }
      round = 0;
      const int from = st.MPI_SOURCE;
      if (st.MPI_TAG == request_tag) {
        request q;
        MPI_Recv(&q, 3, MPI_UINT64_T, from, request_tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        progress_[static_cast<std::size_t>(from)] = q;
        if (q.how != 0 && (all_or_nothing_ || q.how == static_cast<std::uint64_t>(state::stopped))) abandon();
        std::vector<std::uint64_t> batch = std::move(first_[static_cast<std::size_t>(from)]);
        first_[static_cast<std::size_t>(from)].clear();
        if (batch.empty() || abandoned_) batch = take_batch();
        MPI_Send(batch.data(), static_cast<int>(batch.size()), MPI_UINT64_T, from, batch_tag, MPI_COMM_WORLD);
        ++batches_;
      } else {
        std::uint64_t d[5];
        MPI_Recv(d, 5, MPI_UINT64_T, from, done_tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        rank_result& r = results_[static_cast<std::size_t>(from)];
        r.how = static_cast<state>(d[0]);
        r.files = d[1];
        r.bytes = d[2];
        r.errors = d[3];
        std::memcpy(&r.seconds, &d[4], sizeof r.seconds);
        progress_[static_cast<std::size_t>(from)] = request{d[0], d[1], d[2]};
        if (r.how == state::stopped || (r.how != state::ok && all_or_nothing_)) abandon();
        give_back(first_[static_cast<std::size_t>(from)]);  // a rank that never asked
        ++done;
      }
    }
    tick(progress_);
  }

  // The other ranks' ends, by rank (rank 0's is the caller's to fill).
  std::vector<rank_result>& results() { return results_; }
  std::uint64_t batches() const { return batches_; }

 private:
  std::size_t take_front() {  // mutex held
    const std::size_t i = order_.front();
    order_.pop_front();
    bytes_left_ -= sizes_[i];
    return i;
  }

  // Files set aside for a rank that ended without asking for them: rank 0's threads copy them
  // (they are among the largest: to the front).
  void give_back(std::vector<std::uint64_t>& batch) {
    std::lock_guard lock(mutex_);
    for (auto it = batch.rbegin(); it != batch.rend(); ++it) {
      order_.push_front(static_cast<std::size_t>(*it));
      bytes_left_ += sizes_[*it];
    }
    batch.clear();
  }

  // A share of what is left: 1 / (2 x the threads of every rank) of its files and of its bytes,
  // whichever is reached first, at least one file.
  std::vector<std::uint64_t> take_batch() {
    std::lock_guard lock(mutex_);
    std::vector<std::uint64_t> batch;
    if (abandoned_) return batch;
    const std::uint64_t parts = 2ull * static_cast<std::uint64_t>(ranks_) * threads_;
    const std::uint64_t max_files = std::max<std::uint64_t>(order_.size() / parts, 1);
    const std::uint64_t max_bytes = std::max<std::uint64_t>(bytes_left_ / parts, 1);
    std::uint64_t bytes = 0;
    while (!order_.empty() && batch.size() < max_files && bytes < max_bytes) {
      const std::size_t i = take_front();
      bytes += sizes_[i];
      batch.push_back(i);
    }
    return batch;
  }

  std::mutex mutex_;
  std::deque<std::size_t> order_;  // mutex
  std::vector<std::uint64_t> sizes_;
  std::uint64_t bytes_left_ = 0;  // mutex
  int ranks_;
  unsigned threads_;
  bool all_or_nothing_;
  std::atomic<bool> abandoned_{false}, local_done_{false};
  std::vector<std::vector<std::uint64_t>> first_;  // by rank: its first batch, until it asks
  std::vector<rank_result> results_;
  std::vector<request> progress_;
  std::uint64_t batches_ = 0;
};

// The queue as another rank sees it: its threads take files from the last batch, and the one
// that finds it empty asks rank 0 for the next (the others wait for it).
class queue_client {
 public:
  // `progress`: this rank's state, files and bytes so far, sent with each request.
  explicit queue_client(std::function<request()> progress) : progress_(std::move(progress)) {}

  bool next(std::size_t& index) {
    std::lock_guard lock(mutex_);
    if (local_.empty() && !ended_) fetch();
    if (local_.empty()) return false;
    index = local_.front();
    local_.pop_front();
    return true;
  }

 private:
  void fetch() {  // mutex held: one request in flight per rank (MPI_THREAD_SERIALIZED)
    request q = progress_();
    MPI_Request r;
    MPI_Isend(&q, 3, MPI_UINT64_T, 0, request_tag, MPI_COMM_WORLD, &r);
    wait(r);
    MPI_Status st;
    unsigned round = 0;
    for (int flag = 0;;) {
      MPI_Iprobe(0, batch_tag, MPI_COMM_WORLD, &flag, &st);
      if (flag) break;
      pause(round);
    }
    int count = 0;
    MPI_Get_count(&st, MPI_UINT64_T, &count);
    std::vector<std::uint64_t> batch(static_cast<std::size_t>(count));
    MPI_Recv(batch.data(), count, MPI_UINT64_T, 0, batch_tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (batch.empty()) ended_ = true;
    for (std::uint64_t i : batch) local_.push_back(static_cast<std::size_t>(i));
  }

  std::function<request()> progress_;
  std::mutex mutex_;
  std::deque<std::size_t> local_;
  bool ended_ = false;
};

// Tells rank 0 that this rank is done.
inline void send_done(const rank_result& r) {
  std::uint64_t d[5] = {static_cast<std::uint64_t>(r.how), r.files, r.bytes, r.errors, 0};
  std::memcpy(&d[4], &r.seconds, sizeof r.seconds);
  MPI_Request q;
  MPI_Isend(d, 5, MPI_UINT64_T, 0, done_tag, MPI_COMM_WORLD, &q);
  wait(q);
}

}  // namespace pcp::spread
