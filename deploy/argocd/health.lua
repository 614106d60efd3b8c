-- Argo CD health check for rectrain.io/RecTrainJob.
-- Installed as resource.customizations.health.rectrain.io_RecTrainJob in argocd-cm (see argocd-cm.yaml).
-- Succeeded -> Healthy, Failed -> Degraded (with the reason), Suspended -> Suspended,
-- anything else -> Progressing with the training progress ("step 1200/5000 (24%)").
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype and c.status == "True" then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

local function progress_text(status)
  local p = status.progress
  if p == nil or p.step == nil then
    return nil
  end
  local text = "step " .. string.format("%d", p.step)
  if p.totalSteps ~= nil and p.totalSteps > 0 then
    local pct = p.percent
    if pct == nil then
      pct = 100 * p.step / p.totalSteps
    end
    text = text .. "/" .. string.format("%d", p.totalSteps) .. " (" .. string.format("%d", math.floor(pct)) .. "%)"
  end
  if p.loss ~= nil then
    text = text .. ", loss " .. string.format("%.4f", p.loss)
  end
  return text
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local status = obj.status
local phase = status.phase

if phase == "Succeeded" then
  hs.status = "Healthy"
  local msg = "Succeeded"
  if status.metrics ~= nil and status.metrics.auc ~= nil then
    msg = msg .. ", AUC " .. string.format("%.4f", status.metrics.auc)
  end
  hs.message = msg
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(condition(status, "Failed"), "Failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(condition(status, "Suspended"), "Suspended")
else
  hs.status = "Progressing"
  local parts = { phase }
  if status.ready ~= nil then
    parts[#parts + 1] = status.ready .. " ranks running"
  end
  local p = progress_text(status)
  if p ~= nil then
    parts[#parts + 1] = p
  end
  if phase == "Restarting" then
    parts[#parts + 1] = describe(condition(status, "Restarting"), "restart pending")
  end
  hs.message = table.concat(parts, ", ")
end
return hs
