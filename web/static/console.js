// The console's only script besides the charts: confirmations, and live updates pushed
// by the node over a websocket (reconnecting after a restart; the page never polls).
// Everything a job supplies goes into the page as textContent, never as HTML.
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  var live = document.body.dataset.live;
  if (!live) {
    return;
  }
  var status = document.getElementById("live-status");
  var jobId = document.body.dataset.job;
  var delayMs = 500;

  function setStatus(text, cls) {
    status.textContent = text;
    status.className = cls;
  }

  function text(id, value) {
    var el = document.getElementById(id);
    if (el) {
      el.textContent = value;
    }
  }

  function pauseForm(q, csrf) {
    var action = q.paused ? "resume" : "pause";
    var cell = document.createElement("td");
    var form = document.createElement("form");
    form.method = "post";
    form.className = "inline";
    form.action = "/console/queues/" + encodeURIComponent(q.name) + "/" + action;
    var token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrf";
    token.value = csrf;
    var button = document.createElement("button");
    button.type = "submit";
    button.textContent = action.charAt(0).toUpperCase() + action.slice(1);
    form.appendChild(token);
    form.appendChild(button);
    cell.appendChild(form);
    return cell;
  }

  function sameRows(rows, queues) {
    return rows.length === queues.length && queues.every(function (q, i) {
      return rows[i].dataset.queue === q.name && rows[i].dataset.paused === String(q.paused);
    });
  }

  function queueRow(q, states, csrf) {
    var row = document.createElement("tr");
    row.dataset.queue = q.name;
    row.dataset.paused = String(q.paused);
    var name = document.createElement("td");
    var link = document.createElement("a");
    link.href = "/console/jobs?queue=" + encodeURIComponent(q.name);
    link.textContent = q.name;
    name.appendChild(link);
    row.appendChild(name);
    var leasing = document.createElement("td");
    leasing.textContent = q.paused ? "paused" : "on";
    leasing.className = q.paused ? "paused" : "";
    row.appendChild(leasing);
    states.forEach(function (s) {
      var cell = document.createElement("td");
      cell.className = "num";
      cell.dataset.state = s;
      row.appendChild(cell);
    });
    if (csrf) {
      row.appendChild(pauseForm(q, csrf));
    }
    return row;
  }

  // Counts change in place; rows are rebuilt only when the queues or their pause change,
  // so a button is not replaced under the pointer.
  function renderQueues(queues) {
    var table = document.getElementById("queues-table");
    if (!table || !queues.length) {
      return;
    }
    var states = table.dataset.states.split(" ");
    var body = document.getElementById("queues-body");
    var rows = body.querySelectorAll("tr[data-queue]");
    if (!sameRows(rows, queues)) {
      rows = queues.map(function (q) {
        return queueRow(q, states, table.dataset.csrf);
      });
      body.replaceChildren.apply(body, rows);
    }
    queues.forEach(function (q, i) {
      rows[i].querySelectorAll("[data-state]").forEach(function (cell) {
        cell.textContent = String(q.counts[cell.dataset.state] || 0);
      });
    });
  }

  function renderTotals(queues) {
    var totals = {};
    queues.forEach(function (q) {
      Object.keys(q.counts).forEach(function (s) {
        totals[s] = (totals[s] || 0) + q.counts[s];
      });
    });
    document.querySelectorAll("[data-total]").forEach(function (el) {
      el.textContent = String(totals[el.dataset.total] || 0);
    });
  }

  function renderJob(job) {
    if (!job) {
      return;
    }
    var bar = document.getElementById("job-progress");
    bar.value = job.progress || 0;
    text("job-progress-text", ((job.progress || 0) * 100).toFixed(1) + " %");
    text("job-progress-message", job.progress_message || "");
    var state = document.getElementById("job-state");
    if (state.textContent !== job.state) {
      state.textContent = job.state;
      state.className = "state-" + job.state;
    }
    text("job-attempts", job.attempts + " of " + job.max_attempts);
    text("job-result", JSON.stringify(job.result, null, 2));
    text("job-error", (job.error_type ? job.error_type + ": " : "") + (job.error || "-"));
  }

  function onMessage(event) {
    var msg = JSON.parse(event.data);
    if (msg.history) {
      document.dispatchEvent(new CustomEvent("gotask:history", { detail: msg.history }));
      return;
    }
    renderQueues(msg.queues);
    renderTotals(msg.queues);
    text("nodes-count", String(msg.nodes.length));
    document.dispatchEvent(new CustomEvent("gotask:point", { detail: msg.point }));
    if (live === "job") {
      renderJob(msg.job);
    }
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var url = scheme + window.location.host + "/console/ws";
    if (jobId) {
      url += "?job=" + encodeURIComponent(jobId);
    }
    var ws = new WebSocket(url);
    ws.onopen = function () {
      delayMs = 500;
      setStatus("live", "live");
    };
    ws.onmessage = onMessage;
    ws.onclose = function () {
      setStatus("reconnecting…", "down");
      window.setTimeout(connect, delayMs);
      delayMs = Math.min(delayMs * 2, 5000);
    };
  }

  connect();
})();
