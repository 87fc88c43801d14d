// Circuit — the shop's phone app: sign in, scan or type a voucher, take an amount, refund,
// see today's takings and the history. Plain JavaScript, no build step, no CDN.
//
// The one rule above all: the screen says "taken" only when the server answered with a
// receipt. A request that got no answer is shown as NOT confirmed and can be resent with
// the same idempotency key, which can never take the money twice.
"use strict";

const TEXT = {
  fr: {
    tab_scan: "Encaisser", tab_today: "Aujourd'hui", tab_history: "Historique", tab_account: "Compte",
    online: "En ligne", offline: "Hors ligne",
    login_title: "Connexion du commerce", email: "E-mail", password: "Mot de passe",
    totp: "Code à 6 chiffres (application d'authentification)", sign_in: "Se connecter",
    totp_setup_title: "Second facteur obligatoire",
    totp_setup_help: "Scannez ce QR code avec une application d'authentification (ou saisissez la clé), puis entrez le code affiché.",
    totp_key: "Clé", totp_confirm: "Activer",
    scan_title: "Scanner le titre", scan_help: "Placez le QR code du titre dans le cadre.",
    camera_off: "Caméra indisponible : saisissez le code imprimé sous le QR code.",
    manual_code: "Code du titre (12 caractères)", check: "Vérifier",
    checking: "Vérification…", balance: "Solde disponible", expires: "Valable jusqu'au",
    whole_only: "Ce titre s'utilise en une seule fois, pour tout son solde.",
    amount: "Montant à encaisser", all: "Tout le solde", confirm: "Encaisser", cancel: "Annuler",
    cannot_take: "Impossible d'encaisser ce titre",
    taken: "Encaissé", remaining: "Reste sur le titre", receipt_no: "Reçu n°", next: "Titre suivant",
    refused: "Refusé", not_confirmed: "Encaissement NON confirmé",
    not_confirmed_help: "Le serveur n'a pas répondu. Rien n'est encaissé tant qu'il ne l'a pas confirmé. Réessayez quand le réseau revient : la même demande ne peut pas être encaissée deux fois.",
    retry: "Réessayer", pending_found: "Un encaissement n'a pas été confirmé. Vérifiez-le avant de continuer.",
    offline_no_take: "Hors ligne : impossible d'encaisser pour le moment.",
    today_title: "Recettes du jour", nothing_today: "Aucune opération aujourd'hui.",
    wallet_code: "Porte-monnaie d'un habitant", wallet_once: "Code à usage unique : saisissez le montant à payer.",
    net: "Net", redeemed: "encaissés", refunded: "remboursés", latest: "Dernières opérations",
    refund: "Rembourser", refund_confirm: "Rembourser cette opération ? Le montant retourne sur le titre.",
    refunded_label: "remboursé", refund_done: "Remboursé", kind_redeem: "Encaissement", kind_refund: "Remboursement",
    kind_payment: "Porte-monnaie",
    history_title: "Historique", from: "Du", to: "Au", show: "Afficher",
    more: "Plus ancien", csv: "Exporter (CSV)", account_title: "Compte", sign_out: "Se déconnecter",
    close_day: "Clôturer la journée (ticket Z)", closed_day: "Journée clôturée", count: "opérations",
    error: "Erreur", network_error: "Pas de réseau : réessayez.",
    devices: "Appareils connectés", this_device: "cet appareil", revoke: "Déconnecter",
  },
  en: {
    tab_scan: "Take", tab_today: "Today", tab_history: "History", tab_account: "Account",
    online: "Online", offline: "Offline",
    login_title: "Shop sign-in", email: "Email", password: "Password",
    totp: "6-digit code (authenticator app)", sign_in: "Sign in",
    totp_setup_title: "Second factor required",
    totp_setup_help: "Scan this QR code with an authenticator app (or type the key), then enter the code it shows.",
    totp_key: "Key", totp_confirm: "Turn on",
    scan_title: "Scan the voucher", scan_help: "Hold the voucher's QR code inside the frame.",
    camera_off: "No camera: type the code printed under the QR code.",
    manual_code: "Voucher code (12 characters)", check: "Check",
    checking: "Checking…", balance: "Available balance", expires: "Valid until",
    whole_only: "This voucher is used in one go, for its whole balance.",
    amount: "Amount to take", all: "Whole balance", confirm: "Take", cancel: "Cancel",
    cannot_take: "This voucher cannot be taken",
    taken: "Taken", remaining: "Left on the voucher", receipt_no: "Receipt no.", next: "Next voucher",
    refused: "Refused", not_confirmed: "Payment NOT confirmed",
    not_confirmed_help: "The server did not answer. Nothing is taken until it confirms. Try again when the network is back: the same request can never be taken twice.",
    retry: "Try again", pending_found: "A payment was not confirmed. Check it before going on.",
    offline_no_take: "Offline: cannot take payments right now.",
    today_title: "Today's takings", nothing_today: "Nothing today yet.",
    wallet_code: "A resident's wallet", wallet_once: "Single-use code: enter the amount to pay.",
    net: "Net", redeemed: "taken", refunded: "refunded", latest: "Latest transactions",
    refund: "Refund", refund_confirm: "Refund this transaction? The amount goes back to the voucher.",
    refunded_label: "refunded", refund_done: "Refunded", kind_redeem: "Voucher", kind_refund: "Refund",
    kind_payment: "Wallet",
    history_title: "History", from: "From", to: "To", show: "Show",
    more: "Older", csv: "Export (CSV)", account_title: "Account", sign_out: "Sign out",
    close_day: "Close the day (Z report)", closed_day: "Day closed", count: "transactions",
    error: "Error", network_error: "No network: try again.",
    devices: "Signed-in devices", this_device: "this device", revoke: "Sign out",
  },
};

const state = {
  lang: localStorage.getItem("circuit.lang") || "fr",
  token: localStorage.getItem("circuit.token"),
  me: null,
  online: navigator.onLine,
  stream: null,
  scanTimer: null,
};

const $ = (selector, root = document) => root.querySelector(selector);
const t = (key) => TEXT[state.lang][key] || TEXT.fr[key] || key;

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function money(cents, unit) {
  const sign = cents < 0 ? "-" : "";
  const abs = Math.abs(cents);
  const whole = Math.floor(abs / 100).toLocaleString(state.lang === "fr" ? "fr-FR" : "en-GB");
  const frac = String(abs % 100).padStart(2, "0");
  const number = `${sign}${whole}${state.lang === "fr" ? "," : "."}${frac}`;
  const symbol = unit === "EUR" ? "€" : unit === "BUL" ? "Bulles" : unit;
  return state.lang === "fr" || unit !== "EUR" ? `${number} ${symbol}` : `€${number}`;
}

function when(iso, withTime = true) {
  const options = { timeZone: "Europe/Paris", day: "2-digit", month: "2-digit", year: "numeric" };
  if (withTime) Object.assign(options, { hour: "2-digit", minute: "2-digit" });
  return new Date(iso).toLocaleString(state.lang === "fr" ? "fr-FR" : "en-GB", options);
}

function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- talking to the server ---------------------------------------------------------------

class Offline extends Error {}

async function api(method, path, body, headers = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: {
        ...(body !== undefined ? { "Content-Type": "application/json" } : {}),
        ...(state.token ? { Authorization: `Bearer ${state.token}` } : {}),
        ...headers,
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
      cache: "no-store",
    });
  } catch (error) {
    setOnline(false);
    throw new Offline(String(error));
  }
  setOnline(true);
  if (response.status === 401 && state.token && !path.startsWith("/auth/login")) {
    signOutLocally();
    throw Object.assign(new Error("unauthenticated"), { problem: await response.json().catch(() => ({})) });
  }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.blob();
  if (!response.ok) throw Object.assign(new Error(data.code || "error"), { problem: data, status: response.status });
  return { data, status: response.status };
}

function problemText(problem) {
  if (!problem) return t("error");
  const sentence = state.lang === "fr" ? problem.detail_fr || problem.detail : problem.detail;
  return sentence || problem.code || t("error");
}

function setOnline(online) {
  state.online = online;
  const net = $("#net");
  net.textContent = online ? t("online") : t("offline");
  net.className = online ? "net" : "net offline";
  const confirm = $("#confirm-btn");
  if (confirm) confirm.disabled = !online;
  const warn = $("#offline-warning");
  if (warn) warn.hidden = online;
}
window.addEventListener("online", () => setOnline(true));
window.addEventListener("offline", () => setOnline(false));

// --- screens -----------------------------------------------------------------------------

function render(html) {
  stopCamera();
  $("#view").innerHTML = html;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
}

function showTabs(active) {
  const tabs = $("#tabs");
  tabs.hidden = false;
  tabs.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b.dataset.tab === active));
}

function loginScreen(message = "", askCode = false) {
  $("#tabs").hidden = true;
  $("#shop-name").textContent = "Circuit";
  render(`
    <h1>${t("login_title")}</h1>
    <form id="login-form" autocomplete="on">
      <label for="email">${t("email")}</label>
      <input id="email" type="email" autocomplete="username" required>
      <label for="password">${t("password")}</label>
      <input id="password" type="password" autocomplete="current-password" required>
      <div id="totp-field" ${askCode ? "" : "hidden"}>
        <label for="totp">${t("totp")}</label>
        <input id="totp" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="one-time-code">
      </div>
      <p id="login-error" class="error" role="alert">${esc(message)}</p>
      <button id="login-btn" class="primary" type="submit">${t("sign_in")}</button>
    </form>`);
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { email: $("#email").value.trim(), password: $("#password").value,
                   device_label: `${t("tab_scan")} — ${navigator.userAgent.slice(0, 120)}` };
    const code = $("#totp").value.trim();
    if (code) body.totp_code = code;
    try {
      const { data } = await api("POST", "/auth/login", body);
      state.token = data.token;
      localStorage.setItem("circuit.token", data.token);
      await start();
    } catch (error) {
      if (error instanceof Offline) { $("#login-error").textContent = t("network_error"); return; }
      if (["totp_required", "bad_totp"].includes(error.problem?.code)) $("#totp-field").hidden = false;
      $("#login-error").textContent = problemText(error.problem);
    }
  });
}

async function totpSetupScreen() {
  $("#tabs").hidden = true;
  const { data } = await api("POST", "/merchant/totp/setup", {});
  render(`
    <h1>${t("totp_setup_title")}</h1>
    <p>${t("totp_setup_help")}</p>
    <img id="totp-qr" class="qr" alt="QR" src="${esc(data.qr_png_data_uri)}">
    <p class="muted">${t("totp_key")} : <code id="totp-secret">${esc(data.secret)}</code></p>
    <label for="totp-confirm-code">${t("totp")}</label>
    <input id="totp-confirm-code" inputmode="numeric" maxlength="6" autocomplete="one-time-code">
    <p id="totp-error" class="error" role="alert"></p>
    <button id="totp-confirm-btn" class="primary" type="button">${t("totp_confirm")}</button>`);
  $("#totp-confirm-btn").addEventListener("click", async () => {
    try {
      await api("POST", "/merchant/totp/confirm", { code: $("#totp-confirm-code").value.trim() });
      await start();
    } catch (error) {
      $("#totp-error").textContent = error instanceof Offline ? t("network_error") : problemText(error.problem);
    }
  });
}

function scanScreen() {
  showTabs("scan");
  const pending = loadPending();
  render(`
    ${pending ? `<div class="card error" id="pending-warning">${t("pending_found")}
       <button id="pending-btn" class="secondary" type="button">${t("retry")}</button></div>` : ""}
    <h1>${t("scan_title")}</h1>
    <div class="camera"><video id="camera" playsinline muted></video><div class="aim"></div></div>
    <p id="scan-status" class="muted">${t("scan_help")}</p>
    <form id="manual-form">
      <label for="manual-code">${t("manual_code")}</label>
      <input id="manual-code" autocapitalize="characters" autocomplete="off" spellcheck="false" placeholder="XXXX-XXXX-XXXX">
      <button id="manual-btn" class="secondary" type="submit">${t("check")}</button>
    </form>`);
  if (pending) $("#pending-btn").addEventListener("click", () => sendRedeem(pending));
  // Typing a code means the cashier chose it: a camera read must not pull the screen away.
  $("#manual-code").addEventListener("focus", stopCamera);
  $("#manual-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const code = $("#manual-code").value.trim();
    if (code) previewScreen({ code });
  });
  startCamera();
}

async function startCamera() {
  const video = $("#camera");
  if (!navigator.mediaDevices?.getUserMedia) { $("#scan-status").textContent = t("camera_off"); return; }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (error) {
    $("#scan-status").textContent = t("camera_off");
    return;
  }
  if (!video.isConnected) { stopCamera(); return; }
  video.srcObject = state.stream;
  await video.play().catch(() => {});
  const canvas = document.createElement("canvas");
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const tick = () => {
    if (!state.stream) return;
    if (video.readyState >= 2 && video.videoWidth) {
      const scale = Math.min(1, 800 / video.videoWidth);
      canvas.width = Math.round(video.videoWidth * scale);
      canvas.height = Math.round(video.videoHeight * scale);
      context.drawImage(video, 0, 0, canvas.width, canvas.height);
      const image = context.getImageData(0, 0, canvas.width, canvas.height);
      const found = jsQR(image.data, image.width, image.height, { inversionAttempts: "attemptBoth" });
      if (found && found.data) {
        stopCamera();
        if (navigator.vibrate) navigator.vibrate(60);
        if (found.data.startsWith("CW1.")) walletScreen(found.data);
        else previewScreen({ token: found.data });
        return;
      }
    }
    state.scanTimer = setTimeout(tick, 120);
  };
  tick();
}

function stopCamera() {
  clearTimeout(state.scanTimer);
  if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
  state.stream = null;
}

async function previewScreen(scan) {
  showTabs("scan");
  render(`<p class="muted">${t("checking")}</p>`);
  let voucher;
  try {
    ({ data: voucher } = await api("POST", "/merchant/preview", scan));
  } catch (error) {
    return resultScreen({ kind: error instanceof Offline ? "unknown-preview" : "no", problem: error.problem });
  }
  const head = `
    <div class="card" id="preview">
      <h2 id="preview-programme">${esc(voucher.programme_name)}</h2>
      <div class="row"><span>${t("balance")}</span><strong id="preview-balance">${money(voucher.balance_cents, voucher.unit)}</strong></div>
      <div class="row"><span>${t("expires")}</span><span>${when(voucher.expires_at, false)}</span></div>
      <div class="row"><span>Code</span><span>…${esc(voucher.code_hint)}</span></div>
    </div>`;
  if (!voucher.accepted) {
    const r = voucher.refusal;
    render(`${head}
      <div class="result no" id="result" data-code="${esc(r.code)}">
        <div class="big">${t("cannot_take")}</div>
        <p id="result-reason">${esc(state.lang === "fr" ? r.message_fr : r.message)}</p>
      </div>
      <button id="next-btn" class="primary" type="button">${t("next")}</button>`);
    $("#next-btn").addEventListener("click", scanScreen);
    return;
  }
  let cents = voucher.partial_redemption ? 0 : voucher.balance_cents;
  render(`${head}
    <h2>${t("amount")}</h2>
    <div class="amount" id="amount">${money(cents, voucher.unit)}</div>
    ${voucher.partial_redemption ? `
    <div class="keypad" id="keypad">
      ${["1", "2", "3", "4", "5", "6", "7", "8", "9", "00", "0", "⌫"].map((k) => `<button type="button" data-key="${k}">${k}</button>`).join("")}
    </div>
    <button id="all-btn" class="secondary" type="button">${t("all")}</button>` : `<p class="muted">${t("whole_only")}</p>`}
    <p id="offline-warning" class="error" ${state.online ? "hidden" : ""}>${t("offline_no_take")}</p>
    <button id="confirm-btn" class="primary" type="button" ${state.online ? "" : "disabled"}>${t("confirm")}</button>
    <button id="cancel-btn" class="secondary" type="button">${t("cancel")}</button>`);
  const show = () => { $("#amount").textContent = money(cents, voucher.unit); };
  $("#keypad")?.addEventListener("click", (event) => {
    const key = event.target.dataset?.key;
    if (!key) return;
    if (key === "⌫") cents = Math.floor(cents / 10);
    else cents = Math.min(cents * 10 ** key.length + Number(key), 99999999);
    show();
  });
  $("#all-btn")?.addEventListener("click", () => { cents = voucher.balance_cents; show(); });
  $("#cancel-btn").addEventListener("click", scanScreen);
  $("#confirm-btn").addEventListener("click", () => {
    if (cents <= 0) return;
    const request = { key: newKey(), body: { ...scan, amount_cents: cents }, unit: voucher.unit };
    savePending(request);  // before sending: a reload while waiting still knows about it
    sendRedeem(request);
  });
}

// A resident's rotating wallet code (wallets capability): checked, then an amount typed and
// paid from the wallet in one request; the code is single-use and good for about a minute.
async function walletScreen(code) {
  showTabs("scan");
  render(`<p class="muted">${t("checking")}</p>`);
  let wallet;
  try {
    ({ data: wallet } = await api("POST", "/merchant/wallet/preview", { code }));
  } catch (error) {
    return resultScreen({ kind: error instanceof Offline ? "unknown-preview" : "no", problem: error.problem });
  }
  let cents = 0;
  render(`
    <div class="card" id="preview">
      <h2 id="preview-programme">${esc(wallet.programme_name)}</h2>
      <p class="muted">${t("wallet_code")} · ${t("wallet_once")}</p>
    </div>
    <h2>${t("amount")}</h2>
    <div class="amount" id="amount">${money(cents, wallet.unit)}</div>
    <div class="keypad" id="keypad">
      ${["1", "2", "3", "4", "5", "6", "7", "8", "9", "00", "0", "⌫"].map((k) => `<button type="button" data-key="${k}">${k}</button>`).join("")}
    </div>
    <p id="offline-warning" class="error" ${state.online ? "hidden" : ""}>${t("offline_no_take")}</p>
    <button id="confirm-btn" class="primary" type="button" ${state.online ? "" : "disabled"}>${t("confirm")}</button>
    <button id="cancel-btn" class="secondary" type="button">${t("cancel")}</button>`);
  $("#keypad").addEventListener("click", (event) => {
    const key = event.target.dataset?.key;
    if (!key) return;
    cents = key === "⌫" ? Math.floor(cents / 10) : Math.min(cents * 10 ** key.length + Number(key), 99999999);
    $("#amount").textContent = money(cents, wallet.unit);
  });
  $("#cancel-btn").addEventListener("click", scanScreen);
  $("#confirm-btn").addEventListener("click", () => {
    if (cents > 0) sendWalletPayment({ key: newKey(), body: { code, amount_cents: cents }, unit: wallet.unit });
  });
}

function walletResult(title, payment) {
  showTabs("scan");
  render(`
    <div class="result ok" id="result" data-code="ok">
      <div>${title}</div>
      <div class="big" id="result-amount">${money(payment.amount_cents, payment.unit)}</div>
    </div>
    <button id="next-btn" class="primary" type="button">${t("next")}</button>`);
  $("#next-btn").addEventListener("click", scanScreen);
}

async function sendWalletPayment(request) {
  render(`<p class="muted">${t("checking")}</p>`);
  try {
    const { data } = await api("POST", "/merchant/wallet/payments", request.body, { "Idempotency-Key": request.key });
    walletResult(t("taken"), data);
  } catch (error) {
    if (!(error instanceof Offline)) return resultScreen({ kind: "no", problem: error.problem, request });
    render(`
      <div class="result unknown" id="result" data-code="not_confirmed">
        <div class="big">${t("not_confirmed")}</div>
        <p>${t("not_confirmed_help")}</p>
      </div>
      <button id="retry-btn" class="primary" type="button">${t("retry")}</button>`);
    $("#retry-btn").addEventListener("click", () => sendWalletPayment(request));
  }
}

function loadPending() {
  try { return JSON.parse(localStorage.getItem("circuit.pending") || "null"); } catch { return null; }
}
function savePending(request) { localStorage.setItem("circuit.pending", JSON.stringify(request)); }
function clearPending() { localStorage.removeItem("circuit.pending"); }

async function sendRedeem(request) {
  render(`<p class="muted">${t("checking")}</p>`);
  try {
    const { data } = await api("POST", "/merchant/redeem", request.body, { "Idempotency-Key": request.key });
    clearPending();
    resultScreen({ kind: "ok", receipt: data.receipt });
  } catch (error) {
    if (error instanceof Offline) return resultScreen({ kind: "unknown", request });
    clearPending();  // the server answered: it is settled, one way or the other
    resultScreen({ kind: "no", problem: error.problem });
  }
}

function resultScreen({ kind, receipt, problem, request }) {
  showTabs("scan");
  if (kind === "ok") {
    render(`
      <div class="result ok" id="result" data-code="ok">
        <div>${t(receipt.kind === "refund" ? "refund_done" : "taken")}</div>
        <div class="big" id="result-amount">${money(Math.abs(receipt.amount_cents), receipt.unit)}</div>
        <div>${t("remaining")} : <strong id="result-remaining">${money(receipt.voucher_balance_after_cents, receipt.unit)}</strong></div>
        <p class="muted">${esc(receipt.programme_name)} · …${esc(receipt.code_hint)} · ${t("receipt_no")} <span id="result-receipt">${receipt.taking_id}</span></p>
      </div>
      <button id="next-btn" class="primary" type="button">${t("next")}</button>`);
  } else if (kind === "unknown") {
    render(`
      <div class="result unknown" id="result" data-code="not_confirmed">
        <div class="big">${t("not_confirmed")}</div>
        <p>${t("not_confirmed_help")}</p>
      </div>
      <button id="retry-btn" class="primary" type="button">${t("retry")}</button>`);
    $("#retry-btn").addEventListener("click", () => sendRedeem(request));
    return;
  } else {
    const detail = kind === "unknown-preview" ? t("network_error") : problemText(problem);
    const extra = problem?.code === "insufficient_balance" && problem.available_cents !== undefined
      ? `<p>${t("balance")} : <strong>${money(problem.available_cents, request?.unit || "EUR")}</strong></p>` : "";
    render(`
      <div class="result no" id="result" data-code="${esc(problem?.code || "network")}">
        <div class="big">${t("refused")}</div>
        <p id="result-reason">${esc(detail)}</p>${extra}
      </div>
      <button id="next-btn" class="primary" type="button">${t("next")}</button>`);
  }
  $("#next-btn").addEventListener("click", scanScreen);
}

function takingRow(item) {
  const refundable = (item.kind === "redeem" || (item.kind === "payment" && item.wallet_id)) && !item.refunded_by;
  return `
    <div class="row" data-taking="${item.id}">
      <div class="what">
        <div>${t("kind_" + item.kind)} · ${esc(item.programme_name)}${item.code_hint ? ` · …${esc(item.code_hint)}` : ""}</div>
        <div class="muted">${when(item.effective_at)} · n° ${item.id}${item.refunded_by ? ` · ${t("refunded_label")}` : ""}</div>
      </div>
      <div>
        <strong class="${item.amount_cents < 0 ? "neg" : ""}">${money(item.amount_cents, item.unit)}</strong>
        ${refundable ? `<button type="button" class="link refund" style="color:var(--blue);border-color:var(--line)" data-id="${item.id}" data-kind="${item.kind}">${t("refund")}</button>` : ""}
      </div>
    </div>`;
}

function bindRefunds(root) {
  root.querySelectorAll("button.refund").forEach((button) => button.addEventListener("click", async () => {
    if (!confirm(t("refund_confirm"))) return;
    try {
      if (button.dataset.kind === "payment") {  // a resident's wallet payment (wallets capability)
        const { data } = await api("POST", `/merchant/wallet/payments/${button.dataset.id}/refund`, undefined, { "Idempotency-Key": newKey() });
        return walletResult(t("refund_done"), data);
      }
      const { data } = await api("POST", `/merchant/takings/${button.dataset.id}/refund`, undefined, { "Idempotency-Key": newKey() });
      resultScreen({ kind: "ok", receipt: data.receipt });
    } catch (error) {
      if (error instanceof Offline) { alert(t("network_error")); return; }
      resultScreen({ kind: "no", problem: error.problem });
    }
  }));
}

async function todayScreen() {
  showTabs("today");
  render(`<p class="muted">${t("checking")}</p>`);
  let today;
  try {
    ({ data: today } = await api("GET", "/merchant/takings/today"));
  } catch (error) {
    render(`<p class="error">${error instanceof Offline ? t("network_error") : problemText(error.problem)}</p>`);
    return;
  }
  const totals = today.totals.map((p) => `
    <div class="card total" data-programme="${p.programme_id}">
      <h2>${esc(p.programme_name)}</h2>
      <div class="row"><span>${p.redeemed_count} ${t("redeemed")}</span><span>${money(p.redeemed_cents, p.unit)}</span></div>
      ${p.refunded_count ? `<div class="row"><span>${p.refunded_count} ${t("refunded")}</span><span class="neg">${money(p.refunded_cents, p.unit)}</span></div>` : ""}
      ${p.payment_count ? `<div class="row"><span>${p.payment_count} ${t("kind_payment")}</span><span>${money(p.payment_cents, p.unit)}</span></div>` : ""}
      <div class="row"><strong>${t("net")}</strong><strong class="net-total">${money(p.net_cents, p.unit)}</strong></div>
    </div>`).join("");
  render(`
    <h1>${t("today_title")} · ${when(today.day + "T12:00:00Z", false)}</h1>
    <div id="today-totals">${totals || `<p class="muted">${t("nothing_today")}</p>`}</div>
    ${today.latest.length ? `<h2>${t("latest")}</h2><div class="card" id="today-list">${today.latest.map(takingRow).join("")}</div>` : ""}
    ${today.closed ? `<p class="muted" id="closed">${t("closed_day")}</p>` : `<button id="close-btn" class="secondary" type="button">${t("close_day")}</button>`}`);
  bindRefunds($("#view"));
  $("#close-btn")?.addEventListener("click", async () => {
    try {
      const { data } = await api("POST", "/merchant/closures", {});
      alert(`${t("closed_day")} : ${data.count} ${t("count")}`);
      todayScreen();
    } catch (error) {
      alert(error instanceof Offline ? t("network_error") : problemText(error.problem));
    }
  });
}

function parisToday() {
  return new Intl.DateTimeFormat("en-CA", { timeZone: "Europe/Paris" }).format(new Date());
}

async function historyScreen() {
  showTabs("history");
  const today = parisToday();
  render(`
    <h1>${t("history_title")}</h1>
    <form id="history-form">
      <label for="from">${t("from")}</label><input id="from" type="date" value="${today}">
      <label for="to">${t("to")}</label><input id="to" type="date" value="${today}">
      <button class="secondary" type="submit">${t("show")}</button>
    </form>
    <div class="card" id="history-list"></div>
    <button id="history-more" class="secondary" type="button" hidden>${t("more")}</button>
    <button id="csv-btn" class="secondary" type="button">${t("csv")}</button>`);
  let before = null;
  const load = async (reset) => {
    const params = new URLSearchParams({ from: $("#from").value, to: $("#to").value, limit: "30" });
    if (!reset && before) params.set("before_id", before);
    try {
      const { data } = await api("GET", `/merchant/takings?${params}`);
      const list = $("#history-list");
      if (reset) list.innerHTML = "";
      list.insertAdjacentHTML("beforeend", data.items.map(takingRow).join(""));
      bindRefunds(list);
      before = data.next_before_id;
      $("#history-more").hidden = !before;
    } catch (error) {
      $("#history-list").innerHTML = `<p class="error">${error instanceof Offline ? t("network_error") : esc(problemText(error.problem))}</p>`;
    }
  };
  $("#history-form").addEventListener("submit", (event) => { event.preventDefault(); load(true); });
  $("#history-more").addEventListener("click", () => load(false));
  $("#csv-btn").addEventListener("click", async () => {
    try {
      const { data } = await api("GET", `/merchant/takings.csv?from=${$("#from").value}&to=${$("#to").value}`);
      const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(data), download: `circuit-${$("#from").value}.csv` });
      link.click();
      URL.revokeObjectURL(link.href);
    } catch (error) {
      alert(error instanceof Offline ? t("network_error") : problemText(error.problem));
    }
  });
  load(true);
}

function accountScreen() {
  showTabs("account");
  const me = state.me;
  render(`
    <h1>${t("account_title")}</h1>
    <div class="card">
      <div class="row"><span>${esc(me.trade_name)}</span><span>${esc(me.merchant_status)}</span></div>
      <div class="row"><span>${esc(me.email)}</span><span>${esc(me.role.replace("merchant_", ""))}</span></div>
    </div>
    <div id="devices"></div>
    <button id="logout-btn" class="danger" type="button">${t("sign_out")}</button>`);
  $("#logout-btn").addEventListener("click", async () => {
    await api("POST", "/auth/logout").catch(() => {});
    signOutLocally();
  });
  if (me.role === "merchant_owner") showDevices();
}

// The owner sees the shop's signed-in phones and can sign any of them out (a lost phone).
async function showDevices() {
  let sessions;
  try {
    ({ data: sessions } = await api("GET", "/merchant/sessions"));
  } catch (error) {
    return;
  }
  $("#devices").innerHTML = `<h2>${t("devices")}</h2><div class="card">${sessions.map((s) => `
    <div class="row" data-session="${s.id}">
      <div class="what"><div>${esc(s.email)}${s.current ? ` · <strong>${t("this_device")}</strong>` : ""}</div>
        <div class="muted">${esc(s.label.slice(0, 60))} · ${when(s.created_at)}</div></div>
      ${s.current ? "" : `<button type="button" class="link revoke" style="color:var(--red);border-color:var(--line)" data-id="${s.id}">${t("revoke")}</button>`}
    </div>`).join("")}</div>`;
  $("#devices").querySelectorAll("button.revoke").forEach((button) => button.addEventListener("click", async () => {
    try {
      await api("POST", `/merchant/sessions/${button.dataset.id}/revoke`);
    } catch (error) {
      alert(error instanceof Offline ? t("network_error") : problemText(error.problem));
    }
    showDevices();
  }));
}

function signOutLocally() {
  state.token = null;
  state.me = null;
  localStorage.removeItem("circuit.token");
  loginScreen();
}

const TABS = { scan: scanScreen, today: todayScreen, history: historyScreen, account: accountScreen };
$("#tabs").addEventListener("click", (event) => {
  const tab = event.target.dataset?.tab;
  if (tab) TABS[tab]();
});

$("#lang").addEventListener("click", () => {
  state.lang = state.lang === "fr" ? "en" : "fr";
  localStorage.setItem("circuit.lang", state.lang);
  applyLanguage();
  const active = $("#tabs button.on")?.dataset.tab;
  if (!state.token) loginScreen();
  else if (active && active !== "scan") TABS[active]();
  else if (!$("#result") && !$("#preview")) scanScreen();
});

function applyLanguage() {
  document.documentElement.lang = state.lang;
  $("#lang").textContent = state.lang === "fr" ? "EN" : "FR";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  setOnline(state.online);
}

async function start() {
  applyLanguage();
  if (!state.token) return loginScreen();
  try {
    ({ data: state.me } = await api("GET", "/merchant/me"));
  } catch (error) {
    if (error instanceof Offline) {
      render(`<p class="error" id="start-offline">${t("offline_no_take")}</p><button id="retry-btn" class="primary" type="button">${t("retry")}</button>`);
      $("#retry-btn").addEventListener("click", start);
      return;
    }
    return loginScreen(problemText(error.problem));
  }
  $("#shop-name").textContent = state.me.trade_name;
  if (state.me.totp_required) return totpSetupScreen();
  scanScreen();
}

if ("serviceWorker" in navigator) navigator.serviceWorker.register("sw.js").catch(() => {});
start();
