#pragma once
// pcp-mpi's share of the work between MPI ranks: the queue of a tree's units that rank 0 serves
// while its walk fills it, and the broadcasts that bracket a tree. No copying here: each rank
// copies what the queue gives it with pidring's tree copy (pcp_mpi.cpp).
//
// Messages, all point to point with rank 0 except one small broadcast at each end of a tree:
//   request  (rank r -> 0): r's state and progress; answered by
//   batch    (0 -> rank r): the records of the units r copies next (none: no more work for r)
//   done     (rank r -> 0): r's end: its state, files, bytes, seconds and time spent waiting
// A rank asks for its next batch while its threads still have work in hand, so that the reply is
// there when they run out; a file costs 2/batch messages. Batches are a share of what is known
// to be left (guided scheduling), largest first, so the first batches are single big files and
// the last ones many small ones.
//
// Blocking MPI calls spin (Open MPI polls its transports), which on a machine with fewer cores
// than ranks takes the CPU from the ranks that copy: every wait here is a test and a short sleep.
#include <mpi.h>

#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
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

// The wait between two tests of a pending MPI operation: 20 us at first (a reply from a rank
// that is awake), up to 1 ms (a rank busy copying).
inline long pause_ns(unsigned& round) { return std::min<long>(20'000L << std::min(round++, 6u), 1'000'000L); }

inline void pause(unsigned& round) {
  timespec t{0, pause_ns(round)};
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
  void put(const std::vector<char>& bytes) { out_.insert(out_.end(), bytes.begin(), bytes.end()); }
  std::vector<char>& bytes() { return out_; }

 private:
  std::vector<char> out_;
};

class reader {
 public:
  explicit reader(const std::vector<char>& in) : in_(in.data()), size_(in.size()) {}
  template <class T>
  void get(T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    std::memcpy(&v, in_ + at_, sizeof v);
    at_ += sizeof v;
  }
  void get(std::string& s) {
    std::uint64_t n = 0;
    get(n);
    s.assign(in_ + at_, n);
    at_ += n;
  }
  bool at_end() const { return at_ >= size_; }

 private:
  const char* in_;
  std::size_t size_, at_ = 0;
};

// What a rank did, as its done message says and --report writes.
struct rank_result {
  state how = state::ok;
  std::uint64_t files = 0, bytes = 0, errors = 0;
  double seconds = 0;     // from the tree's start (rank 0's word that it is being built) to its end
  // Time with no work in hand: waiting for the walk to find some (the queue was empty), and
  // waiting for the queue to hand over what it had.
  double walk_wait = 0, queue_wait = 0;
  // On rank 0's clock, seconds from the tree's start: when rank 0 first knew that the rank had
  // copied a file (its first request saying so: a bound of its first file's end; -1: never),
  // and when its end came.
  double first_file = -1, end = 0;
};

// The request a rank sends: its state and progress so far (rank 0 draws the sum).
struct request {
  std::uint64_t how = 0, files = 0, bytes = 0;
};

// A unit of work as the queue holds it: its bytes (the order: largest first) and its record,
// which the queue only passes on (pcp_mpi.cpp writes and reads it).
struct unit_record {
  std::uint64_t size = 0;
  std::vector<char> bytes;
};

// Seconds since `t`.
inline double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The queue on rank 0. The walk adds the units it finds as it goes (add); they are dealt largest
// first among those known, in batches: to the other ranks on their requests (serve(), rank 0's
// serving thread) and to rank 0's own threads (take_local()). A request that finds the queue
// empty while the walk goes on is answered when the walk adds to it or ends. Once the copy is
// abandoned (a rank failed or stopped, with `all_or_nothing`; a stop on rank 0; the walk failed)
// every request is answered with an empty batch: no more work.
class queue_server {
 public:
  queue_server(int ranks, unsigned threads, bool all_or_nothing)
      : ranks_(ranks), threads_(std::max(threads, 1u)), all_or_nothing_(all_or_nothing),
        first_(static_cast<std::size_t>(ranks)), asked_(static_cast<std::size_t>(ranks)),
        pending_(static_cast<std::size_t>(ranks)), held_(static_cast<std::size_t>(ranks)),
        asked_at_(static_cast<std::size_t>(ranks)), results_(static_cast<std::size_t>(ranks)),
        progress_(static_cast<std::size_t>(ranks)) {}

  // The walk's thread: units found.
  void add(std::vector<unit_record> units) {
    {
      std::lock_guard lock(mutex_);
      for (unit_record& u : units) {
        bytes_left_ += u.size;
        heap_.push_back(held{u.size, seq_++, std::move(u.bytes)});
        std::push_heap(heap_.begin(), heap_.end(), later);
      }
      // A batch is set aside for each other rank that waits for one, or has not asked yet, as soon
      // as there is work: rank 0's threads take theirs without a round trip and would otherwise
      // take all that the walk finds while the requests wait for the serving thread, and a rank
      // that starts late (ranks outnumbering cores) still gets a share of a tree that rank 0
      // could copy alone meanwhile.
      for (std::size_t r = 1; r < first_.size(); ++r)
        if ((!asked_[r] || pending_[r]) && first_[r].empty()) first_[r] = take_units();
    }
    more_.notify_all();
  }
  // The walk has ended (`ok`: it went through; else the copy is abandoned).
  void walk_ended(bool ok) {
    {
      std::lock_guard lock(mutex_);
      walking_ = false;
      walk_end_ = since(start_);
      if (!ok) abandoned_ = true;
    }
    more_.notify_all();
  }
  double walk_end() const { return walk_end_; }

  // Rank 0's own threads: the next batch (records one after another) in `batch`; waits while the
  // queue is empty and the walk may add to it (`for_walk`: whether it did). false: no more work
  // (or `stopped`).
  bool take_local(std::vector<char>& batch, bool& for_walk, const std::function<bool()>& stopped) {
    std::unique_lock lock(mutex_);
    for (for_walk = false;; for_walk = true) {
      if (abandoned_) return false;
      if (!heap_.empty()) {
        batch = join(take_units());
        return true;
      }
      if (!walking_ || stopped()) return false;
      more_.wait_for(lock, std::chrono::milliseconds(10));
    }
  }
  // Rank 0 copied a file.
  void note_first_file() {
    std::lock_guard lock(mutex_);
    if (results_[0].first_file < 0) results_[0].first_file = since(start_);
  }

  void abandon() {
    {
      std::lock_guard lock(mutex_);
      abandoned_ = true;
    }
    more_.notify_all();
  }
  bool abandoned() {
    std::lock_guard lock(mutex_);
    return abandoned_;
  }
  // Rank 0's own threads have finished: serve() returns once the other ranks have too.
  void local_done() {
    std::lock_guard lock(mutex_);
    if (!local_done_) results_[0].end = since(start_);
    local_done_ = true;
  }

  // Answers requests until every other rank has said it is done and local_done() was called.
  // `tick` runs every 100 ms (progress); `stopped` true abandons the copy. Rank 0's serving thread.
  void serve(const std::function<void(const std::vector<request>&)>& tick, const std::function<bool()>& stopped) {
    int done = 0;
    unsigned round = 0;
    auto last_tick = std::chrono::steady_clock::now();
    for (;;) {
      const bool all_sent = sent();
      {
        std::lock_guard lock(mutex_);
        if (done == ranks_ - 1 && local_done_ && all_sent) break;
      }
      if (stopped()) abandon();
      bool waiting = false;  // a request waits for the walk
      for (int r = 1; r < ranks_; ++r)
        if (pending_[static_cast<std::size_t>(r)]) {
          if (answer(r)) round = 0;
          else waiting = true;
        }
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st);
      const auto now = std::chrono::steady_clock::now();
      if (now - last_tick >= std::chrono::milliseconds(100)) {
        last_tick = now;
        tick(progress_);
      }
      if (!flag && waiting) {  // woken as soon as the walk adds to the queue
        std::unique_lock lock(mutex_);
        more_.wait_for(lock, std::chrono::nanoseconds(pause_ns(round)));
        continue;
      }
      if (!flag) {
        pause(round);
        continue;
      }
      round = 0;
      const int from = st.MPI_SOURCE;
      const auto r = static_cast<std::size_t>(from);
      if (st.MPI_TAG == request_tag) {
        request q;
        MPI_Recv(&q, 3, MPI_UINT64_T, from, request_tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        progress_[r] = q;
        std::lock_guard lock(mutex_);
        if (q.files != 0 && results_[r].first_file < 0) results_[r].first_file = since(start_);
        if (q.how != 0 && (all_or_nothing_ || q.how == static_cast<std::uint64_t>(state::stopped))) abandoned_ = true;
        asked_[r] = true;
        pending_[r] = true;
        asked_at_[r] = std::chrono::steady_clock::now();
      } else {
        std::uint64_t d[7];
        MPI_Recv(d, 7, MPI_UINT64_T, from, done_tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        std::lock_guard lock(mutex_);
        rank_result& res = results_[r];
        res.how = static_cast<state>(d[0]);
        res.files = d[1];
        res.bytes = d[2];
        res.errors = d[3];
        std::memcpy(&res.seconds, &d[4], sizeof res.seconds);
        std::memcpy(&res.walk_wait, &d[5], sizeof res.walk_wait);
        std::memcpy(&res.queue_wait, &d[6], sizeof res.queue_wait);
        res.end = since(start_);
        progress_[r] = request{d[0], d[1], d[2]};
        if (res.how == state::stopped || (res.how != state::ok && all_or_nothing_)) abandoned_ = true;
        give_back(first_[r]);  // a rank that never asked
        ++done;
      }
    }
    tick(progress_);
    served_.store(true);
  }
  // serve() has returned.
  bool served() const { return served_.load(); }

  // Every rank's end, by rank (rank 0's state, counts and seconds are the caller's to fill).
  std::vector<rank_result>& results() { return results_; }
  std::uint64_t batches() const { return batches_; }

 private:
  struct held {
    std::uint64_t size, seq;
    std::vector<char> bytes;
  };
  // The heap's order: the largest unit on top, the first found among equals.
  static bool later(const held& a, const held& b) { return a.size != b.size ? a.size < b.size : a.seq > b.seq; }

  // Answers rank `r`'s pending request if there is something to say: its first batch, the next
  // one, or (abandoned, or the walk over and nothing left) an empty one. Whether it answered.
  bool answer(int r) {
    const auto k = static_cast<std::size_t>(r);
    std::vector<char> batch;
    {
      std::lock_guard lock(mutex_);
      std::vector<held> units = std::move(first_[k]);
      first_[k].clear();
      if (abandoned_) {
        units.clear();
      } else if (units.empty() && heap_.empty() && walking_) {
        held_[k] = true;  // wait for the walk
        return false;
      } else if (units.empty()) {
        units = take_units();
      }
      // First, how long the request waited for the walk to find something (seconds, a double).
      const double for_walk = held_[k] ? since(asked_at_[k]) : 0.0;
      batch.resize(sizeof for_walk);
      std::memcpy(batch.data(), &for_walk, sizeof for_walk);
      const std::vector<char> records = join(units);
      batch.insert(batch.end(), records.begin(), records.end());
      pending_[k] = false;
      held_[k] = false;
    }
    // Sent without waiting for the rank to take it: a big batch moves through shared memory in
    // fragments, as both sides make progress, and other requests must not wait for it.
    sending_.push_back(outgoing{MPI_REQUEST_NULL, std::move(batch)});
    outgoing& o = sending_.back();
    MPI_Isend(o.bytes.data(), static_cast<int>(o.bytes.size()), MPI_CHAR, r, batch_tag, MPI_COMM_WORLD, &o.request);
    ++batches_;
    return true;
  }

  // Sends that have completed are let go. Whether none is left.
  bool sent() {
    for (auto it = sending_.begin(); it != sending_.end();) {
      int done = 0;
      MPI_Test(&it->request, &done, MPI_STATUS_IGNORE);
      it = done ? sending_.erase(it) : it + 1;
    }
    return sending_.empty();
  }

  static std::vector<char> join(const std::vector<held>& units) {
    std::size_t n = 0;
    for (const held& u : units) n += u.bytes.size();
    std::vector<char> out;
    out.reserve(n);
    for (const held& u : units) out.insert(out.end(), u.bytes.begin(), u.bytes.end());
    return out;
  }

  // Units set aside for a rank that ended without asking for them: rank 0's threads copy them.
  void give_back(std::vector<held>& units) {  // mutex held
    for (held& u : units) {
      bytes_left_ += u.size;
      heap_.push_back(std::move(u));
      std::push_heap(heap_.begin(), heap_.end(), later);
    }
    units.clear();
  }

  // A share of what is known to be left: 1 / (2 x the threads of every rank) of its units and of
  // its bytes, whichever is reached first, at least one unit (guided self-scheduling). While the
  // walk goes on, what is known is only what it found so far, far from the end: a thread's share
  // of it, 1 / (the threads of every rank): the guided batches of a few files each would cost a
  // round trip every few files then.
  // Mutex held.
  std::vector<held> take_units() {
    std::vector<held> batch;
    if (abandoned_) return batch;
    const std::uint64_t parts = (walking_ ? 1ull : 2ull) * static_cast<std::uint64_t>(ranks_) * threads_;
    const std::uint64_t max_units = std::max<std::uint64_t>(heap_.size() / parts, 1);
    const std::uint64_t max_bytes = std::max<std::uint64_t>(bytes_left_ / parts, 1);
    std::uint64_t bytes = 0;
    while (!heap_.empty() && batch.size() < max_units && bytes < max_bytes) {
      std::pop_heap(heap_.begin(), heap_.end(), later);
      bytes += heap_.back().size;
      bytes_left_ -= heap_.back().size;
      batch.push_back(std::move(heap_.back()));
      heap_.pop_back();
    }
    return batch;
  }

  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  int ranks_;
  unsigned threads_;
  bool all_or_nothing_;
  std::mutex mutex_;
  std::condition_variable more_;  // the walk added units or ended, or the copy was abandoned
  // mutex:
  std::vector<held> heap_;
  std::uint64_t seq_ = 0, bytes_left_ = 0;
  bool walking_ = true, abandoned_ = false, local_done_ = false;
  double walk_end_ = 0;
  std::vector<std::vector<held>> first_;  // by rank: its next batch, set aside until it asks
  std::vector<char> asked_;               // by rank: it has asked
  std::vector<char> pending_;             // by rank: its request waits for an answer
  std::vector<char> held_;                // by rank: ... because the walk has found nothing yet
  std::vector<std::chrono::steady_clock::time_point> asked_at_;
  std::vector<rank_result> results_;
  std::atomic<bool> served_{false};
  // serving thread only:
  struct outgoing {
    MPI_Request request;
    std::vector<char> bytes;
  };
  std::deque<outgoing> sending_;  // batches on their way
  std::vector<request> progress_;
  std::uint64_t batches_ = 0;
};

// The queue as another rank sees it: requests for batches and their replies. The caller (one
// thread at a time: MPI_THREAD_SERIALIZED) asks ahead, while its threads still have work in hand,
// so that the reply is there when they need it.
class queue_client {
 public:
  // Sends a request with `q` (the rank's state and progress) unless one is in flight or the queue
  // has said there is no more work.
  void ask(const request& q) {
    if (in_flight_ || ended_) return;
    request copy = q;
    MPI_Request r;
    MPI_Isend(&copy, 3, MPI_UINT64_T, 0, request_tag, MPI_COMM_WORLD, &r);
    wait(r);
    in_flight_ = true;
  }
  // The reply to the request in flight, if it has come (with `wait`, once it comes): true with
  // the batch's records in `batch` (none: no more work, ended() from now on). A big batch moves
  // in fragments as both sides make progress, that is, during MPI calls: it is received without
  // waiting (MPI_Imrecv), and each later call here moves it on while the threads still copy.
  bool reply(std::vector<char>& batch, bool wait) {
    if (!in_flight_) return false;
    unsigned round = 0;
    if (!receiving_) {
      MPI_Message m;
      MPI_Status st;
      for (int flag = 0;;) {
        MPI_Improbe(0, batch_tag, MPI_COMM_WORLD, &flag, &m, &st);
        if (flag) break;
        if (!wait) return false;
        pause(round);
      }
      int count = 0;
      MPI_Get_count(&st, MPI_CHAR, &count);
      incoming_.resize(static_cast<std::size_t>(count));
      MPI_Imrecv(incoming_.data(), count, MPI_CHAR, &m, &receive_);
      receiving_ = true;
    }
    for (int done = 0;;) {
      MPI_Test(&receive_, &done, MPI_STATUS_IGNORE);
      if (done) break;
      if (!wait) return false;
      round = 0;  // data is moving: test again soon
      pause(round);
    }
    receiving_ = in_flight_ = false;
    std::memcpy(&for_walk_, incoming_.data(), sizeof for_walk_);
    batch.assign(incoming_.begin() + sizeof for_walk_, incoming_.end());
    if (batch.empty()) ended_ = true;
    return true;
  }
  // How long the last reply's request waited on rank 0 for the walk to find something.
  double for_walk() const { return for_walk_; }
  bool ended() const { return ended_; }

 private:
  bool in_flight_ = false, receiving_ = false, ended_ = false;
  MPI_Request receive_ = MPI_REQUEST_NULL;
  std::vector<char> incoming_;
  double for_walk_ = 0;
};

// Tells rank 0 that this rank is done.
inline void send_done(const rank_result& r) {
  std::uint64_t d[7] = {static_cast<std::uint64_t>(r.how), r.files, r.bytes, r.errors, 0, 0, 0};
  std::memcpy(&d[4], &r.seconds, sizeof r.seconds);
  std::memcpy(&d[5], &r.walk_wait, sizeof r.walk_wait);
  std::memcpy(&d[6], &r.queue_wait, sizeof r.queue_wait);
  MPI_Request q;
  MPI_Isend(d, 7, MPI_UINT64_T, 0, done_tag, MPI_COMM_WORLD, &q);
  wait(q);
}

}  // namespace pcp::spread
