// WebOTP: where the browser supports it (Chrome on Android), offer the code
// from the SMS, whose last line "@<host> #<code>" binds it to this site,
// and submit it. Elsewhere the user types the code; nothing happens here.
(function () {
  if (!('OTPCredential' in window)) return;
  var input = document.querySelector('input[autocomplete="one-time-code"]');
  if (!input || !input.form) return;
  var form = input.form;
  var abort = new AbortController();
  form.addEventListener('submit', function () { abort.abort(); });
  navigator.credentials.get({ otp: { transport: ['sms'] }, signal: abort.signal })
    .then(function (otp) {
      if (otp && otp.code) {
        input.value = otp.code;
        form.submit();
      }
    })
    .catch(function () { /* dismissed, aborted or timed out: the user types it */ });
})();
