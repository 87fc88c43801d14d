// The resident's wallet page. The rotating code is computed here (TOTP, RFC 6238, with
// WebCrypto's HMAC-SHA1) from the wallet's secret kept in localStorage, so the QR keeps
// changing and stays scannable when the phone is offline. No library beyond the two
// vendored ones (qrcode-generator draws the QR, jsQR reads a shop's QR from the camera).
"use strict";

const STORE = "circuit.wallet";
const REFRESH_MS = 3000;

const TEXT = {
  fr: {
    title: "Mon porte-monnaie", open_title: "Ouvrir un porte-monnaie", name: "Nom", email: "E-mail",
    phone: "ou téléphone (+33…)", password_optional: "Mot de passe (facultatif, 10 caractères ou plus)",
    open: "Ouvrir", login_title: "Déjà un porte-monnaie ?", login_id: "E-mail ou téléphone",
    password: "Mot de passe", login: "Se connecter", show_code: "Montrez ce code au commerçant",
    scan: "Payer un commerce", send: "Envoyer", topup: "Recharger", camera: "Scanner avec la caméra",
    paste: "ou collez le code du commerce", amount: "Montant", confirm_pay: "Confirmer le paiement",
    to_wallet: "Numéro du porte-monnaie", confirm_send: "Envoyer", confirm_topup: "Payer en ligne",
    topup_counter: "Ou passez à un comptoir de change avec ce code.", history: "Historique",
    wallet_number: "Numéro du porte-monnaie", logout: "Se déconnecter", offline: "Hors ligne : solde du dernier passage.",
    vouchers: "Bons cadeaux", voucher_code: "Code d'un bon reçu", add_voucher: "Ajouter", show_qr: "Afficher le QR",
    until: (date) => `valable jusqu'au ${date}`, voucher_added: "Bon ajouté.",
    limits: (hold, month, monthMax) => `Plafond ${hold} · reçu ce mois-ci ${month} sur ${monthMax}`,
    paid: "Paiement effectué.", sent: "Envoi effectué.", pay_to: (name) => `Payer ${name}`,
    topup_waiting: (id) => `Rechargement ${id} en attente du paiement en ligne.`, bad_code: "Ce code de commerce n'est pas reconnu.",
    kinds: { "wallet.payment": "Paiement", "wallet.transfer": "Virement", issue: "Rechargement en ligne",
             "counter.credit": "Rechargement au comptoir", "wallet.campaign": "Versement de la ville",
             "town.payments": "Versement de la ville", reversal: "Remboursement" },
  },
  en: {
    title: "My wallet", open_title: "Open a wallet", name: "Name", email: "Email", phone: "or phone (+44…)",
    password_optional: "Password (optional, 10 characters or more)", open: "Open", login_title: "Already have a wallet?",
    login_id: "Email or phone", password: "Password", login: "Sign in", show_code: "Show this code to the shop",
    scan: "Pay a shop", send: "Send", topup: "Top up", camera: "Scan with the camera", paste: "or paste the shop's code",
    amount: "Amount", confirm_pay: "Confirm payment", to_wallet: "Wallet number", confirm_send: "Send",
    confirm_topup: "Pay online", topup_counter: "Or visit an exchange counter with this code.", history: "History",
    wallet_number: "Wallet number", logout: "Sign out", offline: "Offline: balance as last seen.",
    vouchers: "Gift vouchers", voucher_code: "Code of a voucher you received", add_voucher: "Add", show_qr: "Show QR",
    until: (date) => `valid until ${date}`, voucher_added: "Voucher added.",
    limits: (hold, month, monthMax) => `Limit ${hold} · received this month ${month} of ${monthMax}`,
    paid: "Payment made.", sent: "Sent.", pay_to: (name) => `Pay ${name}`,
    topup_waiting: (id) => `Top-up ${id} is waiting for the online payment.`, bad_code: "This shop code is not recognised.",
    kinds: { "wallet.payment": "Payment", "wallet.transfer": "Transfer", issue: "Online top-up",
             "counter.credit": "Counter top-up", "wallet.campaign": "Town payment", "town.payments": "Town payment",
             reversal: "Refund" },
  },
};

let lang = localStorage.getItem("circuit.lang") || (navigator.language || "fr").slice(0, 2);
if (!TEXT[lang]) lang = "fr";
let state = JSON.parse(localStorage.getItem(STORE) || "null");
let merchantToPay = null;
const $ = (id) => document.getElementById(id);
const t = (key, ...args) => { const v = TEXT[lang][key]; return typeof v === "function" ? v(...args) : v; };

function save() { localStorage.setItem(STORE, JSON.stringify(state)); }

function money(cents, unit) {
  return new Intl.NumberFormat(lang === "fr" ? "fr-FR" : "en-GB", { minimumFractionDigits: 2, maximumFractionDigits: 2 })
    .format(cents / 100) + " " + (unit || "");
}

function cents(text) {
  const value = String(text).trim().replace(",", ".");
  if (!/^\d{1,9}(\.\d{1,2})?$/.test(value)) throw new Error(lang === "fr" ? "Montant invalide" : "Invalid amount");
  const [whole, frac = ""] = value.split(".");
  return Number(whole) * 100 + Number((frac + "00").slice(0, 2));
}

function say(message, bad = false) { $("status").textContent = message || ""; $("status").className = bad ? "bad" : ""; }

function translate() {
  document.documentElement.lang = lang;
  $("lang").textContent = lang === "fr" ? "EN" : "FR";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  if (state && state.wallet) render();
}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (state && state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, { ...options, headers });
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) {
    const error = new Error((lang === "fr" && body && body.detail_fr) || (body && body.detail) || response.statusText);
    error.body = body;
    throw error;
  }
  return body;
}

function newKey() {
  return (crypto.randomUUID ? crypto.randomUUID() : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join(""));
}

// --- rotating code (TOTP) -------------------------------------------------------------

function base32(secret) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const out = [];
  let bits = 0, value = 0;
  for (const char of secret.replace(/=+$/, "")) {
    value = ((value << 5) | alphabet.indexOf(char)) & 0xfff;
    bits += 5;
    if (bits >= 8) { out.push((value >>> (bits - 8)) & 0xff); bits -= 8; }
  }
  return new Uint8Array(out);
}

let hmacKey = null;
async function totp(step) {
  const code = state.code;
  if (!hmacKey) hmacKey = await crypto.subtle.importKey("raw", base32(code.secret), { name: "HMAC", hash: "SHA-1" }, false, ["sign"]);
  const message = new DataView(new ArrayBuffer(8));
  message.setUint32(0, Math.floor(step / 2 ** 32));
  message.setUint32(4, step >>> 0);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", hmacKey, message.buffer));
  const offset = mac[19] & 0x0f;
  const binary = ((mac[offset] & 0x7f) << 24) | (mac[offset + 1] << 16) | (mac[offset + 2] << 8) | mac[offset + 3];
  return String(binary % 10 ** code.digits).padStart(code.digits, "0");
}

function drawQr(text, canvas = $("qr")) {
  const qr = qrcode(0, "M");
  qr.addData(text);
  qr.make();
  const modules = qr.getModuleCount(), quiet = 4;
  const scale = Math.max(4, Math.floor(640 / (modules + 2 * quiet)));
  canvas.width = canvas.height = (modules + 2 * quiet) * scale;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#000";
  for (let r = 0; r < modules; r++)
    for (let c = 0; c < modules; c++)
      if (qr.isDark(r, c)) ctx.fillRect((c + quiet) * scale, (r + quiet) * scale, scale, scale);
}

let shownStep = null;
async function tick() {
  if (!state || !state.code) return;
  const now = Date.now() / 1000, step = Math.floor(now / state.code.step_seconds);
  $("code-ttl").max = state.code.step_seconds;
  $("code-ttl").value = state.code.step_seconds - (now % state.code.step_seconds);
  if (step === shownStep) return;
  shownStep = step;
  const payload = `${state.code.prefix}.${state.wallet.id}.${await totp(step)}`;
  drawQr(payload);
  $("code-text").textContent = payload.split(".").pop().replace(/(\d{4})(\d{4})/, "$1 $2");
}

// --- wallet state ---------------------------------------------------------------------

function render() {
  const w = state.wallet;
  $("welcome").hidden = true;
  $("wallet").hidden = false;
  $("holder").textContent = w.display_name;
  $("balance").textContent = money(w.balance_cents, w.unit);
  $("limits").textContent = t("limits", money(w.hold_max_cents, w.unit), money(w.received_month_cents, w.unit),
                              money(w.receive_month_max_cents, w.unit));
  $("wallet-number").textContent = w.id;
  renderVouchers();
  const list = $("history");
  list.replaceChildren(...(state.history || []).map((entry) => {
    const li = document.createElement("li");
    const what = document.createElement("span");
    const kind = t("kinds")[entry.kind] || entry.kind;
    const other = entry.merchant_name || (entry.other_wallet_id ? `#${entry.other_wallet_id}` : "");
    what.textContent = `${new Date(entry.at).toLocaleString(lang)} · ${kind}${other ? " · " + other : ""}`;
    const amount = document.createElement("strong");
    amount.textContent = (entry.amount_cents > 0 ? "+" : "") + money(entry.amount_cents, w.unit);
    amount.className = entry.amount_cents > 0 ? "in" : "out";
    li.dataset.transferId = entry.transfer_id;
    li.append(what, amount);
    return li;
  }));
}

const openVouchers = new Set();  // vouchers whose QR is shown: kept open across refreshes
function renderVouchers() {
  $("vouchers").replaceChildren(...(state.vouchers || []).map((voucher) => {
    const li = document.createElement("li");
    li.dataset.voucherId = voucher.voucher_id;
    const line = document.createElement("div");
    line.className = "voucher-line";
    const what = document.createElement("span");
    what.textContent = `${voucher.programme_name} · ${voucher.code} · ${t("until", new Date(voucher.expires_at).toLocaleDateString(lang))}`;
    const left = document.createElement("strong");
    left.textContent = money(voucher.balance_cents, voucher.unit === "EUR" ? "€" : voucher.unit);
    line.append(what, left);
    const show = document.createElement("button");
    show.type = "button";
    show.textContent = t("show_qr");
    show.addEventListener("click", () => {
      if (!openVouchers.delete(voucher.voucher_id)) openVouchers.add(voucher.voucher_id);
      renderVouchers();
    });
    li.append(line, show);
    if (openVouchers.has(voucher.voucher_id)) {
      const canvas = document.createElement("canvas");
      li.append(canvas);
      drawQr(voucher.token, canvas);
    }
    return li;
  }));
}

async function refresh() {
  if (!state || !state.token) return;
  try {
    const [me, history, vouchers] = await Promise.all([
      api("/wallets/me/"), api("/wallets/me/history"), api("/wallets/me/vouchers")]);
    if (!state.code || state.code.secret !== me.code.secret) hmacKey = null;
    Object.assign(state, { wallet: me.wallet, code: me.code, history, vouchers });
    save();
    if ($("status").textContent === t("offline")) say("");
  } catch (error) {
    if (error.body && error.body.status === 401) { logout(); return; }
    say(t("offline"));
  }
  render();
  tick();
}

function signedIn(opened) {
  state = { token: opened.token, wallet: opened.wallet, history: [] };
  save();
  refresh();
}

function logout() {
  localStorage.removeItem(STORE);
  state = null;
  hmacKey = null;
  shownStep = null;
  $("wallet").hidden = true;
  $("welcome").hidden = false;
}

// --- paying a shop, sending, topping up -----------------------------------------------

async function chooseMerchant(code) {
  const match = /^CM1\.([1-9]\d{0,17})(?:\.(\d{1,12}))?$/.exec(code.trim());
  if (!match) { say(t("bad_code"), true); return; }
  const card = await api(`/wallets/me/merchants/${match[1]}`);
  merchantToPay = card.id;
  $("pay-merchant").textContent = t("pay_to", card.trade_name);
  if (match[2]) { $("pay-amount").value = (Number(match[2]) / 100).toFixed(2); $("pay-amount").readOnly = true; }
  else { $("pay-amount").readOnly = false; }
}

let scanning = false;
async function scanWithCamera() {
  const video = $("camera");
  const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
  video.srcObject = stream;
  video.hidden = false;
  await video.play();
  scanning = true;
  const canvas = document.createElement("canvas"), ctx = canvas.getContext("2d", { willReadFrequently: true });
  const stop = () => { scanning = false; stream.getTracks().forEach((track) => track.stop()); video.hidden = true; };
  const frame = () => {
    if (!scanning) return;
    if (video.readyState >= 2) {
      canvas.width = video.videoWidth; canvas.height = video.videoHeight;
      ctx.drawImage(video, 0, 0);
      const found = jsQR(ctx.getImageData(0, 0, canvas.width, canvas.height).data, canvas.width, canvas.height);
      if (found && found.data.startsWith("CM1.")) {
        stop();
        $("merchant-code").value = found.data;
        chooseMerchant(found.data).catch((error) => say(error.message, true));
        return;
      }
    }
    requestAnimationFrame(frame);
  };
  frame();
}

function toggle(panel) {
  for (const id of ["pay-form", "send-form", "topup-form"]) $(id).hidden = id !== panel || !$(id).hidden;
}

function on(form, handler) {
  $(form).addEventListener("submit", async (event) => {
    event.preventDefault();
    try { say(""); await handler(new FormData(event.target)); }
    catch (error) { say(error.message, true); }
  });
}

on("open-form", async (data) => {
  const body = { display_name: data.get("display_name") };
  for (const field of ["email", "phone", "password"]) if (data.get(field)) body[field] = data.get(field);
  // A scheme with several local currencies links to /wallet/?programme=ID; with one, none is needed.
  const programme = new URLSearchParams(location.search).get("programme");
  if (programme) body.programme_id = Number(programme);
  signedIn(await api("/wallets/open", { method: "POST", body: JSON.stringify(body) }));
});

on("login-form", async (data) => {
  const session = await api("/auth/login", { method: "POST", body: JSON.stringify({
    email: data.get("email"), password: data.get("password"), device_label: "wallet page" }) });
  state = { token: session.token };
  await refresh();
});

on("pay-form", async (data) => {
  if (!merchantToPay) await chooseMerchant(data.get("merchant_code") || "");
  if (!merchantToPay) return;
  await api("/wallets/me/payments", { method: "POST", headers: { "Idempotency-Key": newKey() },
    body: JSON.stringify({ merchant_id: merchantToPay, amount_cents: cents(data.get("amount")) }) });
  merchantToPay = null;
  $("pay-form").reset();
  $("pay-form").hidden = true;
  say(t("paid"));
  refresh();
});

on("send-form", async (data) => {
  await api("/wallets/me/transfers", { method: "POST", headers: { "Idempotency-Key": newKey() },
    body: JSON.stringify({ to_wallet_id: Number(data.get("to_wallet_id")), amount_cents: cents(data.get("amount")) }) });
  $("send-form").reset();
  $("send-form").hidden = true;
  say(t("sent"));
  refresh();
});

on("voucher-form", async (data) => {
  await api("/wallets/me/vouchers", { method: "POST", body: JSON.stringify({ code: data.get("code") }) });
  $("voucher-form").reset();
  say(t("voucher_added"));
  refresh();
});

on("topup-form", async (data) => {
  const intent = await api("/wallets/me/topups", { method: "POST", body: JSON.stringify({ amount_cents: cents(data.get("amount")) }) });
  // A real provider's checkout opens here with intent.intent_id; its webhook issues the units.
  say(t("topup_waiting", intent.intent_id));
});

$("merchant-code").addEventListener("change", (event) => chooseMerchant(event.target.value).catch((error) => say(error.message, true)));
$("scan-button").addEventListener("click", () => toggle("pay-form"));
$("send-button").addEventListener("click", () => toggle("send-form"));
$("topup-button").addEventListener("click", () => toggle("topup-form"));
$("camera-button").addEventListener("click", () => scanWithCamera().catch((error) => say(error.message, true)));
$("logout").addEventListener("click", logout);
$("lang").addEventListener("click", () => { lang = lang === "fr" ? "en" : "fr"; localStorage.setItem("circuit.lang", lang); translate(); });

if ("serviceWorker" in navigator) navigator.serviceWorker.register("sw.js").catch(() => {});
translate();
if (state && state.wallet) { render(); refresh(); } else { $("welcome").hidden = false; }
setInterval(tick, 1000);
setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
